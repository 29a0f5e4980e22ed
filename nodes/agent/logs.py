"""Workload log lines: raw stream bytes -> numbered JSON lines that survive agent crashes.

QEMU itself appends the guest's stdout and stderr (two virtio-serial ports) to `stdout.raw` and
`stderr.raw`, so output keeps flowing while no agent runs. Conversion turns complete lines into
records appended to `logs.jsonl`:

    {"seq": 7, "ts": 1700000000.1, "stream": "stderr", "message": "...", "off": [1234, 56]}

`seq` is one counter across both streams; `off` is the byte offset in stdout.raw and stderr.raw
*after* this record. The last complete record therefore is the whole resume state: after a
SIGKILL at any point the next conversion starts exactly there, so no line is lost or repeated.
A record torn by a kill mid-write has no trailing newline; it is cut off before appending.
Conversion is serialised across processes by an flock, which makes it safe (and idempotent)
for the runtime, `vm logs` and `vm ls` to run it whenever they like.

Everything here is blocking file I/O: call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from nodes.agent.state import VmPaths

STREAMS = ("stdout", "stderr")
# A workload printing without newlines must not grow our memory without bound: a run of this
# many bytes without a newline becomes a line of its own.
MAX_LINE_BYTES = 16 * 1024
# Bytes read per stream per pass, so one pass over a huge backlog stays bounded in memory.
_CHUNK = 1024 * 1024
# Largest record we may have to scan back over to find the last complete one
# (MAX_LINE_BYTES of control characters escape to 6 bytes each, plus the envelope).
_TAIL_WINDOW = 8 * MAX_LINE_BYTES + 4096


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    stream: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _last_record(fd: int) -> dict | None:
    """The last complete record; a torn tail (no newline) is truncated away first."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_WINDOW)
    tail = os.pread(fd, size - start, start)
    end = tail.rfind(b"\n")
    if end + 1 != len(tail):
        # Torn by a kill mid-write: everything after the last newline never became a record.
        os.ftruncate(fd, start + end + 1)
    if end < 0:
        return None
    begin = tail.rfind(b"\n", 0, end) + 1
    return json.loads(tail[begin:end])


def _split(data: bytes, *, final: bool) -> list[tuple[bytes, int]]:
    """Complete lines in `data` (without their newline), each with the bytes it used."""
    lines: list[tuple[bytes, int]] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos, pos + MAX_LINE_BYTES + 1)
        if nl >= 0:
            lines.append((data[pos:nl], nl + 1 - pos))
            pos = nl + 1
        elif len(data) - pos > MAX_LINE_BYTES:
            lines.append((data[pos : pos + MAX_LINE_BYTES], MAX_LINE_BYTES))
            pos += MAX_LINE_BYTES
        elif final:
            # The VM has ended: a last line without newline will never get one.
            lines.append((data[pos:], len(data) - pos))
            pos = len(data)
        else:
            break  # partial line: wait for its newline
    return lines


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_CHUNK)
    except FileNotFoundError:
        return b""


def convert(paths: VmPaths, *, final: bool = False, clock: Callable[[], float] = time.time) -> list[LogLine]:
    """Append the new complete lines of both raw streams to logs.jsonl; returns them.

    `final=True` (the VM has ended) also takes a last partial line of each stream."""
    out: list[LogLine] = []
    lock_fd = os.open(paths.logs_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        fd = os.open(paths.logs, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            last = _last_record(fd)
            seq = last["seq"] if last else 0
            offsets = list(last["off"]) if last else [0, 0]
            while True:
                chunk: list[bytes] = []
                for i, stream in enumerate(STREAMS):
                    data = _read_from(getattr(paths, stream), offsets[i])
                    ts = clock()
                    for raw, used in _split(data, final=final and len(data) < _CHUNK):
                        offsets[i] += used
                        seq += 1
                        message = raw.decode("utf-8", "replace").removesuffix("\r")
                        line = LogLine(seq, ts, stream, message)
                        out.append(line)
                        record = {**line.to_dict(), "off": list(offsets)}
                        chunk.append(json.dumps(record, ensure_ascii=False).encode() + b"\n")
                if not chunk:
                    break
                # One write per pass: a kill can tear only the tail, which _last_record cuts off.
                buf = memoryview(b"".join(chunk))
                while buf:
                    buf = buf[os.write(fd, buf) :]
        finally:
            os.close(fd)
    finally:
        os.close(lock_fd)
    return out


class LogReader:
    """Reads records from logs.jsonl incrementally, only complete lines, skipping seq <= after_seq."""

    def __init__(self, paths: VmPaths, after_seq: int = 0):
        self.paths = paths
        self.after_seq = after_seq
        self._pos = 0

    def read_new(self) -> list[LogLine]:
        try:
            with open(self.paths.logs, "rb") as f:
                f.seek(self._pos)
                data = f.read(_CHUNK * 4)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._pos += end + 1
        out = []
        for raw in data[:end].split(b"\n"):
            rec = json.loads(raw)
            if rec["seq"] > self.after_seq:
                out.append(LogLine(rec["seq"], rec["ts"], rec["stream"], rec["message"]))
                self.after_seq = rec["seq"]
        return out

    def read_all(self) -> list[LogLine]:
        out: list[LogLine] = []
        while batch := self.read_new():
            out.extend(batch)
        return out
