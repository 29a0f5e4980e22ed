"""The shapes of log lines and events as every reader gets them (history, the WebSocket tail,
the SSE stream), and the channel-layer groups that tell live readers something new committed.

One function renders a line and one an event, so the REST history, the live frames and the
SSE `data:` can never drift apart. Live messages are hints on top of PostgreSQL, never the
record: a reader that misses one (channels-redis drops messages for a full channel, and a
Redis outage drops them all) notices the hole in the chain (`prev`) and reads the database.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import uuid
import weakref
from datetime import datetime

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def iso(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, as DRF's DateTimeField renders it (history and frames agree)."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# -- log lines --------------------------------------------------------------------------------


def line_frame(*, cursor: int, replica_uid: uuid.UUID | str, ordinal: int, generation: int, seq: int | None,
               ts: datetime, stream: str, message: str, continued: bool) -> dict:
    """A log line as a live frame carries it; history adds `timestamp` (the old name of `ts`)."""
    return {
        "cursor": str(cursor), "replica": str(replica_uid), "ordinal": ordinal, "generation": generation,
        "seq": seq, "ts": iso(ts), "stream": stream, "message": message, "continued": continued,
    }


class LineRenderer:
    """A replica's lines as frame text, as fast as the sink needs at 20,000 lines/s: the
    replica's part is formatted once, and a node converts many lines per pass with one `ts`,
    so each time is formatted once too. Equal to frame_text(line_frame(...)) (tested)."""

    def __init__(self, *, replica_uid: str, ordinal: int, generation: int):
        self._head = f',"replica":"{replica_uid}","ordinal":{ordinal},"generation":{generation},"seq":'
        self._ts: tuple[datetime | None, str] = (None, "")

    def __call__(self, *, cursor: int, seq: int | None, ts: datetime, stream: str, message: str, continued: bool) -> str:
        if self._ts[0] != ts:
            self._ts = (ts, iso(ts))
        return (f'{{"cursor":"{cursor}"{self._head}{"null" if seq is None else seq},"ts":"{self._ts[1]}",'
                f'"stream":"{stream}","message":{json.dumps(message, ensure_ascii=False)},'
                f'"continued":{"true" if continued else "false"}}}')


def rows_text(rows) -> list[str]:
    """Lines read as tuples (selectors.LOG_ROW_FIELDS) as frame text, one renderer per replica."""
    renderers: dict = {}
    texts = []
    for pk, uid, ordinal, generation, seq, ts, stream, message, continued in rows:
        render = renderers.get(uid)
        if render is None:
            render = renderers[uid] = LineRenderer(replica_uid=str(uid), ordinal=ordinal, generation=generation)
        texts.append(render(cursor=pk, seq=seq, ts=ts, stream=stream, message=message, continued=continued))
    return texts


def row_frame(line) -> dict:
    """A LogLine row (annotated by selectors.log_page) as a live frame."""
    return line_frame(cursor=line.pk, replica_uid=line.replica_uid, ordinal=line.replica_ordinal,
                      generation=line.replica_generation, seq=line.seq, ts=line.ts, stream=line.stream,
                      message=line.message, continued=line.continued)


def line_item(line) -> dict:
    """A LogLine row as history returns it: the frame, and `timestamp` for older clients."""
    frame = row_frame(line)
    frame["timestamp"] = frame["ts"]
    return frame


def logs_group(deployment_id) -> str:
    return f"logs.{uuid.UUID(str(deployment_id)).hex}"


PUBLISH_LINES = 1000  # lines per live message at most


def logs_publish(*, deployment_id, prev: int, lines: list[tuple[int, str, int, str, str]]) -> None:
    """Tell live tails of the deployment that lines committed: `prev` is the deployment's last
    cursor before them, so a tail that is not at `prev` knows it missed something. Each line is
    (cursor, replica uid, ordinal, stream, its frame as JSON text): rendered once here, not once
    per subscriber. Call after the commit."""
    group = logs_group(deployment_id)
    # A transaction may store several of an agent's batches at once: a message stays the size of
    # one, so a tail is handed frames of a size its client reads in one go (HIGH_WATER_BYTES).
    for start in range(0, len(lines), PUBLISH_LINES):
        chunk = lines[start:start + PUBLISH_LINES]
        _group_send(group, {"type": "logs.batch", "prev": prev, "last": chunk[-1][0], "lines": chunk})
        prev = chunk[-1][0]


def frame_text(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# -- events -----------------------------------------------------------------------------------


def event_item(event) -> dict:
    """An Event as the list endpoint and the SSE `data:` show it. Modelled on Volant's
    `/api/v1/events/vms` payload (type, name, status, timestamp), plus what a follower needs to
    resume (`id`) and to act (`deployment_id`, and the full `payload`)."""
    payload = event.payload or {}
    deployment = event.deployment if event.deployment_id else None
    return {
        "id": event.pk,
        "type": event.type,
        "deployment_id": str(event.deployment_id) if event.deployment_id else None,
        "name": deployment.name if deployment is not None else None,
        "status": payload.get("state") or payload.get("status"),
        "timestamp": iso(event.ts),
        "ts": iso(event.ts),
        "payload": payload,
    }


def events_group(tenant_id) -> str:
    return f"events.{int(tenant_id)}"


def events_publish(*, tenant_id) -> None:
    """Wake the tenant's SSE followers (call after the commit); they read what is new."""
    _group_send(events_group(tenant_id), {"type": "events.new"})


# Hints waiting to go out per event loop; past this many, new ones are dropped (a reader notices
# the hole in the chain, or its periodic look at the head, and reads the database).
OUTBOX_LIMIT = 256


class _Outbox:
    """One event loop's hints, sent one at a time in the order they were committed, so a tail
    gets a deployment's batches in chain order and reads the database only after a real loss."""

    def __init__(self, layer):
        self.layer = layer
        self.pending: collections.deque[tuple[str, dict]] = collections.deque()
        self.task: asyncio.Task | None = None

    def put(self, group: str, message: dict) -> None:
        if len(self.pending) >= OUTBOX_LIMIT:
            log.warning("channel layer behind by %d messages: dropped one for %s", len(self.pending), group)
            return
        self.pending.append((group, message))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.pending:
            group, message = self.pending.popleft()
            try:
                await self.layer.group_send(group, message)
            except Exception:  # noqa: BLE001 - Redis away: readers fall back to reading the database
                log.warning("could not notify %s through the channel layer", group, exc_info=True)


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = weakref.WeakKeyDictionary()


def _serving_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread works for, when it is a sync_to_async thread of a server
    (daphne) whose loop still runs; None in a worker, a command or a plain thread."""
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() and not loop.is_closed() else None


def _post(loop: asyncio.AbstractEventLoop, layer, group: str, message: dict) -> None:
    outbox = _outboxes.get(loop)
    if outbox is None or outbox.layer is not layer:
        outbox = _outboxes[loop] = _Outbox(layer)
    outbox.put(group, message)


def _group_send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _serving_loop()
    if loop is not None:
        # In daphne the committing thread does not wait for Redis: its next transaction (the
        # next log batch of an agent) starts at once, and the loop sends the hints in order.
        try:
            loop.call_soon_threadsafe(_post, loop, layer, group, message)
            return
        except RuntimeError:
            pass  # the loop closed meanwhile: send it from here
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # noqa: BLE001 - Redis away: readers fall back to reading the database
        log.warning("could not notify %s through the channel layer", group, exc_info=True)
