"""Ships each replica's log lines to the plane, resuming after the seq the plane has stored.

The VM's own log (`runtime.log_record_chunks()`, numbered lines in logs.jsonl) is the buffer:
QEMU keeps appending to the VM's files whatever the plane does, so nothing here holds more than
a few batches in memory. Its records go out as they are on disk, joined into frames: each is a
valid LogEntry for the plane, so nothing is decoded and encoded again on the way.

Per replica, at most `window` batches are unacknowledged at a time; a slow plane therefore
slows the reading of the log file, never the VM. The plane acknowledges with `logs.ack`
(everything up to a seq is stored); after a reconnect the new `desired` carries the stored seq
again and shipping restarts right after it, so a line is neither lost nor stored twice (lines
sent but not acknowledged before a drop are simply sent again, and the plane's unique
(replica, seq) makes a resend it did store harmless).

Once acknowledged, lines are no longer needed on the node: every TRIM_EVERY lines the shipper
asks the runtime to trim them (logs.trim: the disk under them and their raw bytes is freed), so
a chatty workload holds on disk what the plane has not stored yet, not all it ever printed.

Shipping runs only while a connection is up and has received `desired`: `resume()` starts it,
`disconnected()` stops it all. A replica that leaves the desired set keeps shipping until the
supervisor removes its VM, which first waits (`drain`) for the last lines to be acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from typing import AsyncIterator, Awaitable, Callable, Protocol

from protocol import wire as protocol
from nodes.agent.errors import AgentError
from nodes.agent.logs import LogLine, LogRecords, record_seq
from protocol.wire import Desired, LogEntry
from protocol.vocabulary import PULLING, VM_ENDED_STATES

log = logging.getLogger(__name__)

WINDOW = 4
# A batch's frame stays well under the frame limit even with the window full: four batches in
# flight are at most about 1 MiB of this replica's log in memory.
BATCH_BYTES = protocol.MAX_FRAME_BYTES // 4
POLL_S = 0.5
TRIM_EVERY = 5000  # acknowledged lines between two trims of a replica's log files


class LogSource(Protocol):
    def log_record_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogRecords]: ...

    async def trim_logs(self, name: str, upto_seq: int) -> int: ...


def entry(line: LogLine) -> LogEntry:
    # logs.py already splits a raw line into 64 KiB pieces (each its own seq, marked continued),
    # which never decode to more characters than the protocol allows; should that ever change, a
    # longer piece is cut here, not split: a piece needs a seq of its own, and the seq is the
    # line's identity on the plane.
    return LogEntry(seq=line.seq, ts=line.ts, stream=line.stream, message=line.message[: protocol.MAX_LOG_LINE_CHARS],
                    continued=line.continued)


def _fit(record: bytes) -> bytes:
    """The record with its message cut to what the plane stores, as entry() cuts a line."""
    line = entry(LogLine.from_record(json.loads(record)))
    return json.dumps(dataclasses.asdict(line), ensure_ascii=False).encode()


def _fitted(records: list[bytes]) -> list[bytes]:
    """Records go out as they are on disk; a message holds fewer characters than its record has
    bytes, so only a record longer than the limit can need cutting, and it is looked into."""
    if max(map(len, records)) <= protocol.MAX_LOG_LINE_CHARS:
        return records
    return [_fit(r) if len(r) > protocol.MAX_LOG_LINE_CHARS else r for r in records]


def _take(pending: collections.deque[bytes], budget: int) -> list[bytes]:
    """The next batch off `pending`: as many records as the plane takes in one whose frame, less
    its envelope, fits in `budget` bytes (the first alone if it does not)."""
    batch = [pending.popleft()]
    size = len(batch[0])
    while pending and len(batch) < protocol.MAX_LOG_BATCH_LINES:
        size += len(pending[0]) + 1  # and the comma before it
        if size > budget:
            break
        batch.append(pending.popleft())
    return batch


class _Stream:
    """One replica's shipping state on the current connection."""

    def __init__(self, replica_id: str, acked: int):
        self.replica_id = replica_id
        self.acked = acked
        self.read_seq = acked
        self.in_flight: collections.deque[int] = collections.deque()  # last seq of each batch
        self.flushed = False  # the VM has ended and every line of it is acknowledged
        self.closed = False
        self.task: asyncio.Task | None = None
        self.trimmed = acked  # the seq up to which its log files were last trimmed
        self.trimming: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


class LogShipper:
    def __init__(
        self,
        runtime: LogSource,
        send: Callable[[str], Awaitable[bool]],
        *,
        state_of: Callable[[str], str | None],
        window: int = WINDOW,
        batch_bytes: int = BATCH_BYTES,
        poll_s: float = POLL_S,
        trim_every: int = TRIM_EVERY,
    ):
        self.runtime = runtime
        self._send = send
        self._state_of = state_of
        self.window = window
        self.batch_bytes = batch_bytes
        self.poll_s = poll_s
        self.trim_every = trim_every
        self._streams: dict[str, _Stream] = {}
        self._seen: dict[str, int] = {}
        self._live = False

    # -- what the plane says ------------------------------------------------------------------
    def resume(self, desired: Desired) -> None:
        """A `desired` on this connection: ship each replica after the seq the plane stored."""
        self._live = True
        for replica in desired.replicas:
            self.track(replica.replica_id, replica.acked_seq)

    def track(self, replica_id: str, acked_seq: int) -> None:
        """Ship this replica (replica.start, or a desired entry); already shipping: no-op."""
        if not self._live:
            return  # the next connection's `desired` names it with its stored seq
        stream = self._streams.get(replica_id)
        if stream is not None:
            self.ack(replica_id, acked_seq)
            return
        stream = _Stream(replica_id, acked_seq)
        self._streams[replica_id] = stream
        stream.task = asyncio.create_task(self._ship(stream), name=f"ship-{replica_id}")

    def ack(self, replica_id: str, seq: int) -> None:
        stream = self._streams.get(replica_id)
        if stream is None or seq <= stream.acked:
            return
        stream.acked = seq
        while stream.in_flight and stream.in_flight[0] <= seq:
            stream.in_flight.popleft()
        stream.notify()
        if seq - stream.trimmed >= self.trim_every and (stream.trimming is None or stream.trimming.done()):
            stream.trimming = asyncio.create_task(self._trim(stream, seq), name=f"trim-{replica_id}")

    async def _trim(self, stream: _Stream, seq: int) -> None:
        try:
            freed = await self.runtime.trim_logs(stream.replica_id, seq)
        except (AgentError, OSError) as exc:
            log.warning("%s: could not trim its log files: %s", stream.replica_id, exc)
            return
        stream.trimmed = seq
        log.debug("%s: trimmed up to seq %d (%d bytes freed)", stream.replica_id, seq, freed)

    def disconnected(self) -> None:
        self._live = False
        for replica_id in list(self._streams):
            self._close(replica_id)

    # -- what the supervisor asks -------------------------------------------------------------
    def last_seq(self, replica_id: str) -> int:
        """The highest seq this daemon has read from the replica's log (0: none yet)."""
        return self._seen.get(replica_id, 0)

    async def drain(self, replica_id: str, *, timeout: float) -> bool:
        """Wait until an ended VM's log is fully acknowledged; False if it could not be."""
        stream = self._streams.get(replica_id)
        if stream is None:
            return True
        try:
            await asyncio.wait_for(stream.wait_for(lambda: stream.flushed or stream.closed), timeout)
        except TimeoutError:
            log.warning("%s: log not fully acknowledged after %.0fs (acked up to %d, read %d)",
                        replica_id, timeout, stream.acked, stream.read_seq)
            return False
        return stream.flushed

    def forget(self, replica_id: str) -> None:
        """Its VM is gone: stop shipping it and drop what is known of it."""
        self._close(replica_id)
        self._seen.pop(replica_id, None)

    def _close(self, replica_id: str) -> None:
        stream = self._streams.pop(replica_id, None)
        if stream is not None:
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()
            stream.notify()

    # -- shipping -----------------------------------------------------------------------------
    async def _ship(self, stream: _Stream) -> None:
        # The reader stays at most one chunk of the log file (one read of it) ahead of the
        # sender: with the window full it blocks on the queue and the file waits on disk.
        queue: asyncio.Queue[LogRecords | None] = asyncio.Queue(1)
        reader = asyncio.create_task(self._read(stream, queue), name=f"read-{stream.replica_id}")
        try:
            await self._send_batches(stream, queue)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("shipping logs of %s failed", stream.replica_id)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, stream: _Stream, queue: asyncio.Queue[LogRecords | None]) -> None:
        name = stream.replica_id
        while True:
            if self._state_of(name) not in (None, PULLING):  # its workload may have written
                try:
                    # Chunks, not lines: at 20,000 lines/s a queue hop per line was the shipper's
                    # biggest cost.
                    async for chunk in self.runtime.log_record_chunks(name, after_seq=stream.read_seq, follow=True):
                        await queue.put(chunk)
                        stream.read_seq = chunk.last_seq
                        self._seen[name] = chunk.last_seq
                except AgentError:
                    pass  # removed under us, or not created yet: the state says which below
                except Exception:  # a bug, or an unreadable file: retried, never a silent stop
                    log.exception("reading the log of %s failed; retrying", name)
                # follow=True ends only once the VM has ended (every line is in the file by then)
                # or if its state was not readable yet; the supervisor's state tells them apart.
                if self._state_of(name) in VM_ENDED_STATES:
                    await queue.put(None)
                    return
            await asyncio.sleep(self.poll_s)

    async def _send_batches(self, stream: _Stream, queue: asyncio.Queue[LogRecords | None]) -> None:
        pending: collections.deque[bytes] = collections.deque()
        budget = self.batch_bytes - len(protocol.encode_logs_records(stream.replica_id, []))
        ended = False
        while True:
            await stream.wait_for(lambda: len(stream.in_flight) < self.window)
            while not pending and not ended:
                chunk = await queue.get()
                if chunk is None:
                    ended = True
                else:
                    pending.extend(_fitted(chunk.records))
            if not pending:
                break  # the VM ended and every line of it went out
            turns = 1  # the reader may hold the next chunk ready: give it one turn to hand it over
            while not ended and len(pending) < protocol.MAX_LOG_BATCH_LINES:
                try:
                    chunk = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if not turns:
                        break
                    turns -= 1
                    await asyncio.sleep(0)
                    continue
                if chunk is None:
                    ended = True
                else:
                    pending.extend(_fitted(chunk.records))
            batch = _take(pending, budget)
            stream.in_flight.append(record_seq(batch[-1]))  # before sending: its ack may come back at once
            if not await self._send(protocol.encode_logs_records(stream.replica_id, batch)):
                return  # disconnected: disconnected() cancels this task, the next desired resumes
        await stream.wait_for(lambda: not stream.in_flight)
        stream.flushed = True
        stream.notify()
        log.info("%s: log shipped and acknowledged up to seq %d", stream.replica_id, stream.acked)
