"""Workload log lines: raw stream bytes -> numbered JSON lines that survive agent crashes.

QEMU itself appends the guest's stdout and stderr (two virtio-serial ports) to `stdout.raw` and
`stderr.raw`, so output keeps flowing while no agent runs. Conversion turns complete lines into
records appended to `logs.jsonl`:

    {"seq": 7, "ts": 1700000000.1, "stream": "stderr", "message": "...", "off": [1234, 56]}

`seq` is one counter across both streams; `off` is the byte offset in stdout.raw and stderr.raw
*after* this record. A line longer than MAX_LINE_BYTES is split into records of that size, each
but the last marked `"continued": true`, so a reader can put the line back together. The last complete record therefore is the whole resume state: after a
SIGKILL at any point the next conversion starts exactly there, so no line is lost or repeated.
A record torn by a kill mid-write has no trailing newline; it is cut off before appending.
Conversion is serialised across processes by an flock, which makes it safe (and idempotent)
for the runtime, `vm logs` and `vm ls` to run it whenever they like.

Once the plane has acknowledged lines, `trim()` gives their disk back: it punches holes over
the acknowledged records and the raw bytes they came from (fallocate PUNCH_HOLE), which keeps
every file's size and therefore every offset, so conversion, resume and readers work exactly as
before; readers skip the zeros a hole reads as. A chatty workload thus holds on disk only what
the plane has not stored yet (plus a small tail), not everything it ever printed.

Everything here is blocking file I/O: call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Callable

from nodes.agent.state import VmPaths, read_json, write_json_atomic
from protocol.vocabulary import STDERR, STDOUT

# The guest's two output files, in the order of their offsets in each record's "off".
STREAMS = (STDOUT, STDERR)
# A workload printing without newlines must not grow our memory without bound: a run of this
# many bytes without a newline becomes a record of its own, marked as continued by the next.
# 64 KiB is what the plane stores per line (protocol.MAX_LOG_LINE_CHARS counts characters, and
# 64 KiB of bytes never decodes to more characters than that).
MAX_LINE_BYTES = 64 * 1024
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
    continued: bool = False  # the line goes on in the next record of this stream

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> LogLine:
        return cls(rec["seq"], rec["ts"], rec["stream"], rec["message"], rec.get("continued", False))


def _last_record(fd: int) -> dict | None:
    """The last complete record; a torn tail (no newline) is truncated away first.

    Runs on every conversion pass, so it reads a small tail first and widens it only when the
    last record is longer (a 64 KiB line of control characters is a 384 KiB record)."""
    window = 4096
    while True:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        start = max(0, size - window)
        tail = os.pread(fd, size - start, start)
        end = tail.rfind(b"\n")
        begin = tail.rfind(b"\n", 0, max(end, 0)) + 1
        if (end < 0 or begin == 0) and start > 0 and window < _TAIL_WINDOW:
            window = min(window * 8, _TAIL_WINDOW)  # the record (or the tear) starts further back
            continue
        if end + 1 != len(tail):
            # Torn by a kill mid-write: everything after the last newline never became a record.
            os.ftruncate(fd, start + end + 1)
        if end < 0:
            return None
        return json.loads(_past_hole(tail[begin:end]))


def _past_hole(raw: bytes) -> bytes:
    """A record read across the end of a trimmed (hole-punched) region: what follows the last
    NUL. A record never holds a NUL (JSON escapes it), and a hole ends where a record starts,
    so that is the whole record; what was before it had been acknowledged and trimmed."""
    cut = raw.rfind(b"\x00")
    return raw if cut < 0 else raw[cut + 1 :]


def _cut(data: bytes, pos: int) -> int:
    """Where a piece of an over-long line ends: MAX_LINE_BYTES on, moved back to the start of a
    UTF-8 character, so a split never turns one valid character into two replacement marks."""
    end = pos + MAX_LINE_BYTES
    for back in range(4):
        if data[end - back] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return end - back
    return end  # not UTF-8 anyway: any cut is as good as another


def _split(data: bytes, *, final: bool) -> list[tuple[bytes, int, bool]]:
    """Complete lines in `data` (without their newline), each with the bytes it used and whether
    it is a piece of a longer line that continues in the next."""
    lines: list[tuple[bytes, int, bool]] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos, pos + MAX_LINE_BYTES + 1)
        if nl >= 0:
            lines.append((data[pos:nl], nl + 1 - pos, False))
            pos = nl + 1
        elif len(data) - pos > MAX_LINE_BYTES:
            end = _cut(data, pos)
            lines.append((data[pos:end], end - pos, True))
            pos = end
        elif final:
            # The VM has ended: a last line without newline will never get one.
            lines.append((data[pos:], len(data) - pos, False))
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


def _pass_fields(ts: float, stream: str) -> str:
    """What every record of one stream in one conversion pass has in common, formatted once."""
    return f', "ts": {ts!r}, "stream": "{stream}", "message": '


def _record(seq: int, shared: str, message: str, continued: bool, off: list[int]) -> str:
    """One line of logs.jsonl, byte for byte what json.dumps(ensure_ascii=False) makes of the
    record dict, formatted directly: the dict and the general encoder were most of the cost of
    a conversion. Only the message needs escaping (the json module's own escaper, which
    json.dumps uses); repr of a float is how json writes it, so `ts` reads back the same."""
    more = ', "continued": true' if continued else ""
    return f'{{"seq": {seq}{shared}{encode_basestring(message)}{more}, "off": [{off[0]}, {off[1]}]}}\n'


def convert(paths: VmPaths, *, final: bool = False, clock: Callable[[], float] = time.time,
            keep: bool = True) -> list[LogLine]:
    """Append the new complete lines of both raw streams to logs.jsonl; returns them.

    `final=True` (the VM has ended) also takes a last partial line of each stream. `keep=False`
    returns only the last line (all the runtime needs: its seq): a backlog of gigabytes left by
    an agent outage is then converted a megabyte at a time, never held."""
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
                chunk: list[str] = []
                for i, stream in enumerate(STREAMS):
                    data = _read_from(getattr(paths, stream), offsets[i])
                    ts = clock()
                    shared = _pass_fields(ts, stream)
                    line = None
                    for raw, used, continued in _split(data, final=final and len(data) < _CHUNK):
                        offsets[i] += used
                        seq += 1
                        message = raw.decode("utf-8", "replace")
                        if not continued:
                            message = message.removesuffix("\r")
                        chunk.append(_record(seq, shared, message, continued, offsets))
                        line = (seq, ts, stream, message, continued)
                        if keep:
                            out.append(LogLine(*line))
                    if line is not None and not keep:
                        # A LogLine costs about what its record does: only the last one is made.
                        out[:] = [LogLine(*line)]
                if not chunk:
                    break
                # One write per pass: a kill can tear only the tail, which _last_record cuts off.
                buf = memoryview("".join(chunk).encode())
                while buf:
                    buf = buf[os.write(fd, buf) :]
        finally:
            os.close(fd)
    finally:
        os.close(lock_fd)
    return out


def last_seq(paths: VmPaths) -> int:
    """The seq of the last complete record (0: none yet)."""
    lock_fd = os.open(paths.logs_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            fd = os.open(paths.logs, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            last = _last_record(fd)
        finally:
            os.close(fd)
        return last["seq"] if last else 0
    finally:
        os.close(lock_fd)


# What trim() leaves of each raw stream's end whatever was acknowledged: lifecycle.crash_reason
# reads the last 16 KiB of stderr.raw.
TRIM_KEEP_BYTES = 64 * 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def _punch(path: Path, end: int) -> int:
    """Deallocates [0, end) of the file, keeping its size; returns the bytes given back."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return 0
    try:
        before = os.fstat(fd).st_blocks * 512
        if end <= 0 or _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, end) != 0:
            err = ctypes.get_errno()
            if end > 0 and err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, f"punching {path.name}: {os.strerror(err)}")
            return 0  # a filesystem without holes keeps everything, as before trimming existed
        return max(0, before - os.fstat(fd).st_blocks * 512)
    finally:
        os.close(fd)


def trim(paths: VmPaths, upto_seq: int) -> int:
    """Frees the disk under every record up to `upto_seq` (which the plane has stored) and under
    the raw bytes they were converted from; returns about how many bytes that gave back.

    The record with `upto_seq` itself is kept, so the last complete record (the resume state)
    is never touched. Progress lives in logs.trim ({"pos", "seq"}): each call scans only what was
    acknowledged since the last one."""
    lock_fd = os.open(paths.logs_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        done = read_json(paths.logs_trim) or {"pos": 0, "seq": 0}
        if upto_seq <= done["seq"]:
            return 0
        keep_from, last, seq = done["pos"], None, done["seq"]
        try:
            f = open(paths.logs, "rb")
        except FileNotFoundError:
            return 0
        with f:
            pos = done["pos"]
            while True:
                f.seek(pos)
                data = f.read(_CHUNK)
                end = data.rfind(b"\n")
                if end < 0:
                    break
                start = 0
                for raw in data[:end].split(b"\n"):
                    record_start = pos + start
                    start += len(raw) + 1
                    stripped = _past_hole(raw)
                    if not stripped:
                        continue
                    record = record_seq(stripped)  # only the last one kept is decoded, below
                    if record > upto_seq:
                        break
                    keep_from, last, seq = record_start + len(raw) - len(stripped), stripped, record
                else:
                    pos += end + 1
                    continue
                break
        if last is None:
            return 0
        off = json.loads(last)["off"]
        freed = _punch(paths.logs, keep_from)
        for i, stream in enumerate(STREAMS):
            path = getattr(paths, stream)
            size = path.stat().st_size if path.exists() else 0
            freed += _punch(path, min(off[i], size - TRIM_KEEP_BYTES))
        write_json_atomic(paths.logs_trim, {"pos": keep_from, "seq": seq}, mode=0o600)
        return freed
    finally:
        os.close(lock_fd)


@dataclass(slots=True)
class LogRecords:
    """Complete records of logs.jsonl as they are on disk (without their newline), in seq order.
    Each is a JSON object of a protocol.LogEntry's fields plus `off`, which the plane ignores, so
    the shipper sends them on as they are."""

    first_seq: int
    last_seq: int
    records: list[bytes]


_SEQ_PREFIX = b'{"seq": '


def record_seq(raw: bytes) -> int:
    """A record's seq without decoding the record: _record writes every one as `{"seq": N, `."""
    if raw.startswith(_SEQ_PREFIX):
        return int(raw[len(_SEQ_PREFIX) : raw.index(b",", len(_SEQ_PREFIX))])
    return json.loads(raw)["seq"]  # not written by _record: the slow way, never a wrong seq


class LogReader:
    """Reads records from logs.jsonl incrementally, only complete lines, skipping seq <= after_seq."""

    def __init__(self, paths: VmPaths, after_seq: int = 0):
        self.paths = paths
        self.after_seq = after_seq
        self._pos = 0

    def read_new(self, max_bytes: int = _CHUNK * 4) -> list[LogLine]:
        """The complete records after the last read, from at most `max_bytes` of the file (more
        if one record is longer)."""
        return [LogLine.from_record(json.loads(raw)) for raw in self._fresh(max_bytes)]

    def read_records(self, max_bytes: int = _CHUNK * 4) -> LogRecords | None:
        """What read_new reads, as the records' bytes, none decoded (None: nothing new)."""
        fresh = self._fresh(max_bytes)
        return LogRecords(record_seq(fresh[0]), self.after_seq, fresh) if fresh else None

    def _fresh(self, max_bytes: int) -> list[bytes]:
        """The records of the next read with a seq past after_seq. A read that holds none (a
        reader started far behind its after_seq) is no reason to stop: an empty answer must
        mean the end of what is written, or a follower of an ended VM stops short of it."""
        while records := self._complete(max_bytes):
            fresh = []
            after = self.after_seq
            for raw in records:
                seq = record_seq(raw)
                if seq > after:
                    fresh.append(raw)
                    after = seq
            self.after_seq = after
            if fresh:
                return fresh
        return []

    def read_all(self) -> list[LogLine]:
        out: list[LogLine] = []
        while batch := self.read_new():
            out.extend(batch)
        return out

    def _complete(self, max_bytes: int) -> list[bytes]:
        """The complete records from where the last read ended, which this one then moves past;
        what a trimmed region's zeros hid of them is cut off."""
        try:
            with open(self.paths.logs, "rb") as f:
                try:
                    # Past a trimmed (hole-punched) start without reading its zeros.
                    self._pos = os.lseek(f.fileno(), self._pos, os.SEEK_DATA)
                except OSError:
                    return []  # ENXIO: nothing written after our position yet
                f.seek(self._pos)
                data = f.read(max_bytes)
                while data and b"\n" not in data and len(data) < _TAIL_WINDOW:
                    more = f.read(max_bytes)  # one record longer than max_bytes: read it whole
                    if not more:
                        break
                    data += more
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._pos += end + 1
        body = data[:end]
        records = body.split(b"\n")
        if b"\x00" in body:  # the read began in a trimmed region: zeros before the first record
            records = [_past_hole(raw) for raw in records]
        return list(filter(None, records))
