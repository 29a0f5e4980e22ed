"""`WS /ws/v1/deployments/{id}/logs`: a deployment's log, replayed then live.

Who may connect: a bearer token with `deployments:read` (Authorization header), the dashboard
session (with `?tenant=`), or a single-use `?ticket=` from POST .../logs/ticket. A caller who
cannot authenticate is refused before the socket opens; a deployment that is not the caller's
tenant's answers exactly as one that does not exist (an error frame, then close code 4404).

Frames are JSON Lines: each text frame holds one or more lines, each a JSON object. A log line
has the fields of history (`cursor`, `replica`, `ordinal`, `generation`, `seq`, `ts`, `stream`,
`message`, `continued`); a notice has a `type` (`missed`, `error`).

Nothing is lost between the replay and live lines, and nothing is sent twice: the consumer
joins the deployment's group (through the process's relay, fanout.py) before it reads the log's head, and keeps one position (`cursor`,
in the deployment's unfiltered order) that every line it sends must be past. Live messages
chain onto the cursor before them (`prev`); one that does not (a message the channel layer
dropped, or one that overtook another) sends the tail back to reading PostgreSQL from its
cursor, which is complete because cursors follow commit order.

A replay (the `tail` asked for, or everything after `after=`) is read in pages and sends at most
LOG_READ_BUDGET_BYTES of lines (selectors.LINE_OVERHEAD_BYTES): one that reaches it ends with a
`truncated` notice carrying `next_cursor`, and the socket closes (CLOSE_REPLAY_BUDGET). It
never skips ahead to live lines: reconnecting with `after=<next_cursor>` replays the rest.

The caller's access is checked again every STREAM_ACCESS_RECHECK_S (streams.access_lost): a
revoked or expired token, or a member removed from the tenant, ends the socket with an error
frame and CLOSE_UNAUTHENTICATED or CLOSE_FORBIDDEN within seconds.

A client that reads slower than its deployment logs is never buffered for without bound.
daphne offers no backpressure to the application (django/daphne#170: its Twisted transport
buffers whatever it is given), so the consumer looks at how much that transport holds
(`streams.send_buffer`) and sends nothing while it is over HIGH_WATER_BYTES. Once the client
has drained it, the tail catches up from PostgreSQL; if more than MAX_LAG_LINES arrived
meanwhile (after the replay the client asked for), it skips them and says so: a `missed`
notice with how many and the cursors to fetch them by.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from urllib.parse import parse_qsl

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import ValidationError

from accounts.selectors import tenant_by_id
from cloud import sockets, streams
from cloud.deployments import fanout, feeds, selectors
from cloud.deployments.serializers import LogTailQuery
from cloud.deployments.serializers.inputs import MAX_LOG_LINES
from cloud.deployments.services.tickets import log_ticket_redeem
from cloud.errors import flatten_details
from cloud.exceptions import NotFound

log = logging.getLogger(__name__)


def _read(fn):
    """A tail's reads run beside each other, not in the one thread that stores the agents' log
    batches (Channels' database_sync_to_async): ten tails catching up must not hold up storing."""
    return DatabaseSyncToAsync(fn, thread_sensitive=False)

PAGE_LINES = 2000  # lines read from PostgreSQL per catch-up step
# Live lines a tail that is reading PostgreSQL keeps to join onto once it is done. The batches
# are the relay's, shared by every tail of the deployment in the process.
MAX_HELD_LINES = 20_000
# A frame holds lines up to about this much text. A line waits for its whole frame to be
# sent and read: with ten followers of 20,000 lines/s, 256 KiB frames gave a p99 of 250-350 ms
# and 64 KiB frames 210 ms (bench/logs.py), for no more CPU.
FRAME_BYTES = 64 * 1024
# The transport holds this much unsent: stop sending. A live message of a chatty deployment is
# up to about a quarter MiB of frames, so this leaves room for several while the client reads.
HIGH_WATER_BYTES = 4 * 1024 * 1024
MAX_LAG_LINES = MAX_LOG_LINES  # a client behind by more than this, past its replay, skips ahead
WAIT_S = 0.05  # how often a stalled tail looks whether its client drained the transport
# A live tail reads the head this often anyway: a batch whose message was lost (Redis away
# for a moment) and nothing after it would otherwise stay unsent until the next batch.
WATCH_S = 5.0

# A page read from PostgreSQL holds at most this much of lines (and PAGE_LINES lines): two
# thousand lines of 64 KiB each would otherwise be 128 MiB in one read.
PAGE_BYTES = 4 * 1024 * 1024

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401  # the token was revoked or expired while the socket was open
CLOSE_FORBIDDEN = 4403  # the user is no longer a member of the tenant
CLOSE_NOT_FOUND = 4404
CLOSE_REPLAY_BUDGET = 4413  # the replay reached its byte budget: reconnect with after=<next_cursor>


def _query(scope) -> dict:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _frames(texts: list[str]) -> list[str]:
    """Lines as frames of about FRAME_BYTES each (JSON Lines: one or more lines per frame)."""
    frames: list[str] = []
    chunk: list[str] = []
    size = 0
    for text in texts:
        if chunk and size + len(text) > FRAME_BYTES:
            frames.append("\n".join(chunk))
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        frames.append("\n".join(chunk))
    return frames


class LogTailConsumer(streams.NoConnectionSweep, AsyncWebsocketConsumer):
    # Tests swap this for a fake transport; in production it reads daphne's.
    send_buffer = staticmethod(streams.send_buffer)

    async def connect(self):
        self.deployment_ref = self.scope["url_route"]["kwargs"]["deployment_id"]
        self.group = None
        self._pump: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self._guard: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.ending = False
        raw = _query(self.scope)
        try:
            tenant, self.access = await database_sync_to_async(self._authenticate)(raw)
        except streams.StreamRefused as exc:
            await sockets.refuse_handshake(self.scope, self.base_send, status=exc.status, detail=exc.detail,
                                           code=exc.code)
            return
        await self.accept()
        query = LogTailQuery(data=raw)
        if not query.is_valid():
            errors = flatten_details(ValidationError(query.errors).get_full_details())
            await self._fail(400, "Invalid " + ", ".join(sorted({e["field"] for e in errors if e["field"]})), errors)
            return
        params = query.validated_data
        try:
            self.filter = await database_sync_to_async(selectors.log_filter_for)(
                tenant=tenant, deployment_id=self.deployment_ref, replica=params.get("replica"),
                stream=params.get("stream"))
        except NotFound as exc:
            await self._fail(404, exc.detail)
            return
        except LookupError as exc:
            await self._fail(400, "Invalid replica", [{"field": "replica", "message": str(exc), "code": "invalid"}])
            return
        self.probe = self.send_buffer(self.base_send)
        self.seen_head = 0  # the highest cursor any live message announced
        self.cursor = 0
        self.live = False
        self.behind = False
        self.held: collections.deque[dict] = collections.deque()  # live batches that came while reading
        self.held_lines = 0
        self.group = feeds.logs_group(self.filter.deployment_id)
        # Join first, read the head second: a batch committed after the read is announced to us.
        await fanout.subscribe(self.group, self)
        head = await _read(selectors.log_head)(deployment_id=self.filter.deployment_id)
        self.seen_head = max(self.seen_head, head)
        self.replay_until = head  # the client asked for everything up to here, at its own pace
        self.replay_left = settings.LOG_READ_BUDGET_BYTES  # ... up to this much of it on this socket
        after = params.get("after")
        if after is not None:
            self.cursor = after
        elif params["tail"]:
            # The pump replays the tail from where it starts, in pages, like any other replay.
            self.cursor = await _read(selectors.log_tail_start)(log_filter=self.filter, tail=params["tail"],
                                                                before=head + 1)
        else:
            self.cursor = head
        self._kick()
        self._watch = asyncio.create_task(self._watch_head(), name=f"log-watch-{self.channel_name}")
        self._guard = asyncio.create_task(self._recheck_access(), name=f"log-access-{self.channel_name}")

    def _authenticate(self, raw: dict) -> tuple[object, streams.Access]:  # (the tenant, what let it in)
        ticket = raw.get("ticket")
        if ticket:
            grant = log_ticket_redeem(ticket=ticket, deployment_id=self.deployment_ref)
            if grant is None:
                raise streams.StreamRefused(401, "The ticket is unknown, expired or used.", "not_authenticated")
            return tenant_by_id(grant.access.tenant_id), grant.access
        caller = streams.caller_for(
            authorization=_header(self.scope, b"authorization"), session_user=self.scope.get("user"),
            tenant_slug=_header(self.scope, b"x-tenant") or raw.get("tenant") or None, scope="deployments:read")
        return caller.tenant, caller.access

    async def disconnect(self, code):
        for task in (self._pump, self._watch, self._guard):
            if task is not None:
                task.cancel()
        if self.group is not None:
            await fanout.unsubscribe(self.group, self)

    async def receive(self, text_data=None, bytes_data=None):
        """The tail only talks; what a client sends is ignored."""

    # -- sending ------------------------------------------------------------------------------
    def _stop(self) -> None:
        """The socket is closing: its background work ends now, not when the server gets round
        to reporting the disconnect (the task calling this ends on its own)."""
        self.ending = True
        current = asyncio.current_task()
        for task in (self._pump, self._watch, self._guard):
            if task is not None and task is not current:
                task.cancel()

    async def _fail(self, status: int, detail: str, errors: list | None = None, code: int | None = None) -> None:
        self._stop()
        await self.send(text_data=json.dumps({"type": "error", "status": status, "detail": detail, "errors": errors or []}))
        await self.close(code=code or (CLOSE_NOT_FOUND if status == 404 else CLOSE_BAD_REQUEST))

    async def _recheck_access(self) -> None:
        """The socket lasts only as long as what let it in (streams.access_lost)."""
        while True:
            await asyncio.sleep(settings.STREAM_ACCESS_RECHECK_S)
            lost = await _read(streams.access_lost)(self.access)
            if lost is not None:
                log.info("log tail of %s ended: %s", self.deployment_ref[:40], lost.detail)
                async with self._lock:  # not in the middle of a page
                    await self._fail(lost.status, lost.detail,
                                     code=CLOSE_UNAUTHENTICATED if lost.status == 401 else CLOSE_FORBIDDEN)
                return

    def _blocked(self) -> bool:
        buffered = self.probe()
        return buffered is not None and buffered > HIGH_WATER_BYTES

    async def _send_lines(self, texts: list[str]) -> None:
        for frame in _frames(texts):
            await self.send(text_data=frame)

    # -- live ---------------------------------------------------------------------------------
    async def logs_batch(self, message):
        """A committed batch, handed over by the process's relay (fanout.py), which serves every
        tail of the deployment in turn, so this never waits for the pump. While the pump reads
        PostgreSQL the batch is held for it: the pump reads only up to the first held batch,
        then sends the held batches that chain on, and is live. Without them a tail that
        catches up while its deployment logs would never arrive: every batch committed during
        a read would be one more read."""
        self.seen_head = max(self.seen_head, message["last"])
        if message["last"] <= self.cursor or self.ending:
            return
        if not self.live or self._lock.locked():
            self._hold(message)
            return
        if message["prev"] > self.cursor or self._blocked():
            # A hole in the chain, or a client that fell behind.
            self.live = False
            self._kick()
            return
        async with self._lock:
            await self._send_batch(message)

    def _hold(self, message: dict) -> None:
        if self.held_lines + len(message["lines"]) > MAX_HELD_LINES:
            # More came than a reader should keep: the pump reads those from PostgreSQL too.
            self.held.clear()
            self.held_lines = 0
            return
        self.held.append(message)
        self.held_lines += len(message["lines"])

    async def _send_batch(self, message: dict) -> None:
        lines = message["lines"]
        if self.filter.everything and message["prev"] >= self.cursor:
            # The whole batch, as every unfiltered tail in the process sends it: made into frames
            # once, on the message the relay hands to each of them.
            frames = message.get("frames")
            if frames is None:
                frames = message["frames"] = _frames([line[4] for line in lines])
            self.cursor = message["last"]
            for frame in frames:
                await self.send(text_data=frame)
            return
        if self.filter.everything:
            texts = [line[4] for line in lines if line[0] > self.cursor]
        else:
            texts = [text for cursor, uid, ordinal, stream, text in lines
                     if cursor > self.cursor and self.filter.matches(replica_uid=uid, ordinal=ordinal, stream=stream)]
        self.cursor = message["last"]
        await self._send_lines(texts)

    async def _send_held(self) -> None:
        """The held batches that chain onto the cursor, in order; the rest are dropped (a hole:
        the pump reads on from PostgreSQL)."""
        while self.held:
            message = self.held.popleft()
            self.held_lines -= len(message["lines"])
            if message["last"] <= self.cursor:
                continue
            if message["prev"] > self.cursor or self._blocked():
                self.held.clear()
                self.held_lines = 0
                return
            await self._send_batch(message)

    async def _watch_head(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            if not self.live:
                continue
            head = await _read(selectors.log_head)(deployment_id=self.filter.deployment_id)
            if self.live and head > self.cursor and self.seen_head < head:
                self.live = False  # committed, never announced: read it
                self._kick()

    # -- catching up from PostgreSQL ------------------------------------------------------------
    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name=f"log-tail-{self.channel_name}")

    async def _run_pump(self) -> None:
        try:
            while True:
                async with self._lock:
                    delay = await self._step()
                if delay is None:
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed read must not leave the client waiting in silence
            log.exception("log tail of %s failed", self.filter.deployment_id)
            await self.close(code=1011)

    async def _step(self) -> float | None:
        """One step towards live: None once live (or closing), else seconds until the next step."""
        if self.ending:
            return None
        if self._blocked():
            self.behind = True
            return WAIT_S
        head = await _read(selectors.log_head)(deployment_id=self.filter.deployment_id)
        if self.behind and self.cursor >= self.replay_until:
            missed = await _read(selectors.log_count)(
                log_filter=self.filter, after=self.cursor, until=head)
            if missed > MAX_LAG_LINES:
                await self.send(text_data=json.dumps({
                    "type": "missed", "missed": missed, "after": str(self.cursor), "until": str(head),
                    "detail": f"{missed} lines came faster than this connection read them: they were skipped. "
                              "Fetch them from the history with after=<after>, up to the cursor <until>."}))
                self.cursor = head
        self.behind = False
        # Read only up to where the held batches take over: a tail behind a busy deployment
        # reads the gap once, not everything committed while it read.
        until = min(head, self.held[0]["prev"]) if self.held else head
        # The replay the client asked for counts against its budget, and a page never runs past
        # its end: what follows it is live, never budgeted, never skipped.
        replaying = self.cursor < self.replay_until
        bound = min(until, self.replay_until) if replaying else until
        budget = min(PAGE_BYTES, max(self.replay_left, 1)) if replaying else PAGE_BYTES
        page = await _read(selectors.log_page)(
            log_filter=self.filter, after=self.cursor, before=bound + 1, limit=PAGE_LINES, rows=True, budget=budget)
        await self._send_lines(feeds.rows_text(page.items))
        if replaying:
            self.replay_left -= page.cost
        if page.has_more:
            self.cursor = page.items[-1][0]
            if replaying and self.replay_left <= 0:
                await self._end_replay()
                return None
            return 0
        self.cursor = max(self.cursor, bound)
        if bound < until:
            return 0  # the replay is done; what came after it is read next
        await self._send_held()
        if self.seen_head > self.cursor:
            return 0  # committed while we read: read once more
        self.live = True
        return None

    async def _end_replay(self) -> None:
        """The replay reached its budget with lines still to send: say where it stopped, and
        close rather than go live past lines the client never got."""
        budget = settings.LOG_READ_BUDGET_BYTES
        self._stop()
        await self.send(text_data=json.dumps({
            "type": "truncated", "next_cursor": str(self.cursor), "budget_bytes": budget,
            "detail": f"This replay reached its budget of {budget} bytes. Reconnect with after={self.cursor} "
                      "for the lines that follow (or read them with GET .../logs?after=)."}))
        await self.close(code=CLOSE_REPLAY_BUDGET)
