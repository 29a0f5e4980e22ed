// Small behaviours every dashboard page shares. No inline handlers anywhere: the CSP forbids them.
(function () {
  "use strict";

  // A <select data-autosubmit> submits its form on change (tenant switcher, status filter).
  document.addEventListener("change", function (event) {
    var el = event.target;
    if (el.matches && el.matches("select[data-autosubmit]")) el.form.requestSubmit();
  });

  // A form with data-confirm asks first (stop, delete, scale...).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  // A <button data-copy="text"> copies the text (an endpoint's URL, a key's secret) and says so.
  // Delegated, so buttons in parts htmx swaps in (the deployment page's live part) work too.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http on another host has no clipboard API: the older select-and-copy.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var done = document.execCommand("copy");
    document.body.removeChild(area);
    return done ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-copy]");
    if (!button) return;
    if (!button.hasAttribute("data-label")) button.setAttribute("data-label", button.textContent);
    var label = button.getAttribute("data-label");
    copyText(button.getAttribute("data-copy")).then(function () {
      button.textContent = "Copied";
    }, function () {
      button.textContent = "Select and copy it";
    }).then(function () {
      window.setTimeout(function () { button.textContent = label; }, 1500);
    });
  });

  // New-deployment form: template cards pre-fill the fields; GPU counts follow the hardware.
  function setupNewDeployment(form) {
    var sources = form.querySelectorAll("[data-source]");
    function showSource() {
      var picked = form.querySelector("input[name=source]:checked").value;
      sources.forEach(function (block) { block.hidden = block.getAttribute("data-source") !== picked; });
    }
    form.querySelectorAll("input[name=source]").forEach(function (r) { r.addEventListener("change", showSource); });
    showSource();

    var gpus = form.querySelector("#gpus_per_container");
    var hardware = form.querySelector("#hardware_id");
    function limitCounts() {
      var option = hardware.selectedOptions[0];
      var counts = option && option.getAttribute("data-counts");
      var allowed = counts ? counts.split(",") : null;
      Array.prototype.forEach.call(gpus.options, function (o) {
        o.hidden = o.disabled = Boolean(allowed && o.value !== "" && allowed.indexOf(o.value) < 0);
      });
      if (gpus.selectedOptions[0] && gpus.selectedOptions[0].disabled) gpus.value = "";
    }
    hardware.addEventListener("change", limitCounts);
    limitCounts();

    form.querySelectorAll("input[name=template_id]").forEach(function (card) {
      card.addEventListener("change", function () {
        var port = card.getAttribute("data-port");
        if (port) form.querySelector("#traffic_port").value = port;
        var min = card.getAttribute("data-min-gpus");
        var wanted = min === "0" ? "" : min;
        var opt = Array.prototype.find.call(gpus.options, function (o) { return o.value === wanted && !o.disabled; });
        gpus.value = opt ? wanted : "";
        form.querySelector("#image_url").value = card.getAttribute("data-image") || "";
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("new-deployment");
    if (form) setupNewDeployment(form);
  });
})();
