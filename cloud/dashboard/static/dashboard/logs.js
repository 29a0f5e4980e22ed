// The deployment page's live log: WS /ws/v1/deployments/{id}/logs with the session cookie.
//
// Why it is shaped like this:
// - Lines are put in the page with textContent only, never innerHTML: a log line is whatever a
//   workload printed (HTML, ANSI escapes, replacement characters for invalid UTF-8) and must
//   stay inert text. ANSI colour codes are stripped so they do not show as noise.
// - Frames can bring thousands of lines a second. Each frame is parsed into a queue, and the
//   DOM is touched once per animation frame (one DocumentFragment), so the page keeps
//   answering clicks; a paused view keeps queueing and catches up on resume.
// - Every line is kept (up to MAX_KEPT) for search, filter and download; the DOM shows them all
//   too, filtered ones hidden, so a filter change is a class toggle, not a re-fetch.
(function () {
  "use strict";
  var MAX_KEPT = 100000;
  var ANSI = /\u001b\[[0-9;?]*[ -\/]*[@-~]/g;

  function start(section) {
    var q = function (name) { return section.querySelector("[data-log=" + name + "]"); };
    var view = q("view"), state = q("state"), follow = q("follow"), pauseBtn = q("pause");
    var replicaSel = q("replica"), streamSel = q("stream"), search = q("search");
    var kept = [];       // {el, text, ordinal, stream}
    var queue = [];      // parsed, not yet in the DOM
    var paused = false, scheduled = false, lastCursor = null, retry = 0;

    function matches(line) {
      var r = replicaSel.value, s = streamSel.value, needle = search.value.toLowerCase();
      return (!r || String(line.ordinal) === r) && (!s || line.stream === s) &&
             (!needle || line.lower.indexOf(needle) >= 0);
    }

    function flush() {
      scheduled = false;
      if (paused || !queue.length) return;
      var batch = queue; queue = [];
      var fragment = document.createDocumentFragment();
      for (var i = 0; i < batch.length; i++) {
        var line = batch[i];
        var el = document.createElement("div");
        el.className = "line " + line.stream;
        el.textContent = line.text;  // inert text, always
        if (!matches(line)) el.hidden = true;
        line.el = el;
        kept.push(line);
        fragment.appendChild(el);
      }
      view.appendChild(fragment);
      while (kept.length > MAX_KEPT) kept.shift().el.remove();
      if (follow.checked) view.scrollTop = view.scrollHeight;
      state.textContent = kept.length + " lines";
    }

    function schedule() {
      if (!scheduled) { scheduled = true; window.requestAnimationFrame(flush); }
    }

    function take(item) {
      if (item.type === "missed") {
        item = {replica: "", stream: "system", ordinal: "", ts: "",
                message: "[" + item.missed + " lines skipped while this view fell behind]"};
      } else if (item.type === "error") {
        state.textContent = item.detail || "error";
        return;
      } else if (item.type) {
        return;  // e.g. "truncated": the replay's budget; the reconnect goes on after lastCursor
      }
      if (item.cursor) lastCursor = item.cursor;
      var text = (item.ts ? item.ts.slice(11, 23) + " " : "") + "#" + item.ordinal + " " +
                 String(item.message).replace(ANSI, "");
      queue.push({text: text, lower: text.toLowerCase(), ordinal: item.ordinal, stream: item.stream});
    }

    function connect() {
      var proto = location.protocol === "https:" ? "wss:" : "ws:";
      var params = new URLSearchParams({tenant: section.getAttribute("data-tenant")});
      // A reconnect resumes after the last line seen; the first connect replays the tail.
      if (lastCursor) params.set("after", lastCursor); else params.set("tail", "1000");
      var ws = new WebSocket(proto + "//" + location.host + section.getAttribute("data-log-url") + "?" + params);
      ws.onopen = function () { retry = 0; state.textContent = "live"; };
      ws.onmessage = function (message) {
        var parts = String(message.data).split("\n");
        for (var i = 0; i < parts.length; i++) {
          if (!parts[i]) continue;
          try { take(JSON.parse(parts[i])); } catch (e) { /* a malformed frame is dropped, not fatal */ }
        }
        schedule();
      };
      ws.onclose = function (event) {
        // 4401/4403: the session's access to this tenant ended; reconnecting would be refused.
        if ([4400, 4401, 4403, 4404].indexOf(event.code) >= 0) { state.textContent = "log unavailable"; return; }
        state.textContent = "reconnecting…";
        retry = Math.min(retry + 1, 5);
        window.setTimeout(connect, 500 * retry);
      };
    }

    function refilter() {
      for (var i = 0; i < kept.length; i++) kept[i].el.hidden = !matches(kept[i]);
    }
    [replicaSel, streamSel].forEach(function (el) { el.addEventListener("change", refilter); });
    var searchTimer = null;
    search.addEventListener("input", function () { clearTimeout(searchTimer); searchTimer = setTimeout(refilter, 150); });

    pauseBtn.addEventListener("click", function () {
      paused = !paused;
      pauseBtn.setAttribute("aria-pressed", String(paused));
      pauseBtn.textContent = paused ? "Resume" : "Pause";
      if (paused) state.textContent = "paused (" + kept.length + " shown)"; else schedule();
    });
    view.addEventListener("wheel", function () {
      // Scrolling up to read stops following; scrolling back to the bottom resumes it.
      window.requestAnimationFrame(function () {
        follow.checked = view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
      });
    }, {passive: true});
    q("download").addEventListener("click", function () {
      var lines = kept.filter(matches).map(function (l) { return l.text; });
      var blob = new Blob([lines.join("\n") + "\n"], {type: "text/plain"});
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = section.getAttribute("data-name") + ".log";
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
    });
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("section[data-log-url]").forEach(start);
  });
})();
