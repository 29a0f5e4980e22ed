import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from protocol import wire as protocol
from nodes.agent.lifecycle import last_lines
from nodes.agent.logs import MAX_LINE_BYTES, LogReader, _last_record, convert, record_seq, trim
from nodes.agent.shipper import entry
from nodes.agent.state import VmPaths


def _paths(tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    return VmPaths(d)


def _append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def test_lines_get_one_seq_across_streams_and_keep_stream_order(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"out 1\nout 2\n")
    _append(p.stderr, b"err 1\n")
    first = convert(p)
    _append(p.stdout, b"out 3\n")
    second = convert(p)
    assert [(x.seq, x.stream, x.message) for x in first + second] == [
        (1, "stdout", "out 1"),
        (2, "stdout", "out 2"),
        (3, "stderr", "err 1"),
        (4, "stdout", "out 3"),
    ]
    assert [x.seq for x in LogReader(p).read_all()] == [1, 2, 3, 4]


def test_partial_line_waits_for_its_newline_unless_the_vm_ended(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"hel")
    assert convert(p) == []
    _append(p.stdout, b"lo\nwor")
    assert [x.message for x in convert(p)] == ["hello"]
    assert [x.message for x in convert(p, final=True)] == ["wor"]
    assert convert(p, final=True) == []


def test_conversion_is_idempotent(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"a\nb\n")
    convert(p)
    assert convert(p) == []
    assert convert(p, final=True) == []
    assert len(LogReader(p).read_all()) == 2


def test_torn_last_record_is_cut_and_conversion_resumes(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"a\nb\n")
    convert(p)
    # A kill in the middle of the record write leaves half a JSON line behind.
    _append(p.logs, b'{"seq": 3, "ts": 1, "stream": "std')
    _append(p.stdout, b"c\n")
    assert [(x.seq, x.message) for x in convert(p)] == [(3, "c")]
    records = [json.loads(line) for line in p.logs.read_text().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[-1]["off"] == [6, 0]


def test_line_without_newline_is_split_at_the_limit_and_marked_continued(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"x" * (MAX_LINE_BYTES * 2 + 10))
    lines = convert(p)
    assert [(len(x.message), x.continued) for x in lines] == [(MAX_LINE_BYTES, True), (MAX_LINE_BYTES, True)]
    assert [(len(x.message), x.continued) for x in convert(p, final=True)] == [(10, False)]
    assert [x.continued for x in LogReader(p).read_all()] == [True, True, False]


def test_a_long_line_is_split_whole_and_pieces_join_back_to_it(tmp_path):
    p = _paths(tmp_path)
    # A three-byte character straddles the limit: a byte-exact cut would make two U+FFFD.
    line = "a" * (MAX_LINE_BYTES - 1) + "\u20ac" + "b" * (MAX_LINE_BYTES * 3) + "\x1b[31mred\x1b[0m"
    _append(p.stdout, line.encode() + b"\nnext\n")
    lines = convert(p)
    pieces = lines[:-1]
    assert all(x.continued for x in pieces[:-1]) and not pieces[-1].continued
    assert all(len(x.message.encode()) <= MAX_LINE_BYTES for x in pieces)
    assert "".join(x.message for x in pieces) == line
    assert (lines[-1].message, lines[-1].continued) == ("next", False)
    assert [x.seq for x in LogReader(p).read_all()] == list(range(1, len(lines) + 1))


def test_invalid_utf8_and_crlf_are_tolerated(tmp_path):
    p = _paths(tmp_path)
    _append(p.stderr, b"bad \xff byte\r\n")
    assert [x.message for x in convert(p)] == ["bad \ufffd byte"]


def test_reader_skips_up_to_after_seq_and_follows_new_records(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"1\n2\n3\n")
    convert(p)
    reader = LogReader(p, after_seq=2)
    assert [x.message for x in reader.read_new()] == ["3"]
    assert reader.read_new() == []
    _append(p.stderr, b"4\n")
    convert(p)
    assert [(x.seq, x.message) for x in reader.read_new()] == [(4, "4")]


# Lines a workload may print that JSON has to escape or that are not ASCII: quotes, backslashes,
# control characters, a NUL, separators JavaScript dislikes, characters of 2, 3 and 4 bytes.
AWKWARD = ['say "hi" \\ to C:\\dir', "tab\there\x01\x1b[31mred\x1b[0m\x7f", "nul \x00 inside", "\u2028\u2029",
           "caf\u00e9 \u20ac \U0001f600 \u4e2d\u6587", "'single' {\"json\": [1]}", "", " ", "\ufeffbom"]


def test_records_are_what_json_dumps_writes_of_them_with_ts_exact(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, "\n".join(AWKWARD).encode() + b"\nbad \xff\xfe utf-8\r\n" + b"y" * (MAX_LINE_BYTES + 5))
    _append(p.stderr, b"err\n")
    times = iter([1700000000.1, 0.1 + 0.2, 1e22, 5e-324])
    lines = convert(p, clock=lambda: next(times), final=True)
    records = p.logs.read_bytes().splitlines()
    assert len(records) == len(lines) == len(AWKWARD) + 4
    for line, raw in zip(lines, records):
        rec = json.loads(raw)
        assert raw == json.dumps(rec, ensure_ascii=False).encode()  # separators, escapes, float text
        assert list(rec) == ["seq", "ts", "stream", "message", *(["continued"] if line.continued else []), "off"]
        assert (rec["seq"], rec["ts"], rec["stream"], rec["message"], rec.get("continued", False)) == (
            line.seq, line.ts, line.stream, line.message, line.continued)
        assert record_seq(raw) == line.seq
    assert [x.message for x in lines[: len(AWKWARD) + 1]] == [*AWKWARD, "bad \ufffd\ufffd utf-8"]
    assert {x.ts for x in lines} == {1700000000.1, 0.1 + 0.2}  # one clock reading per stream and pass
    assert json.loads(records[-1])["off"] == [p.stdout.stat().st_size, 4]


def test_keep_false_returns_only_the_last_line_and_writes_the_same_records(tmp_path):
    (tmp_path / "kept").mkdir(), (tmp_path / "last").mkdir()
    kept, last = _paths(tmp_path / "kept"), _paths(tmp_path / "last")
    for p in (kept, last):
        _append(p.stdout, b"1\n2\n")
        _append(p.stderr, b"3\n")
    assert convert(last, keep=False, clock=lambda: 1.5) == convert(kept, clock=lambda: 1.5)[-1:]
    assert last.logs.read_bytes() == kept.logs.read_bytes()
    assert convert(last, keep=False) == []


def test_a_reader_far_behind_its_after_seq_reads_on_to_the_end(tmp_path):
    """Reads that hold only lines up to after_seq (a shipper resuming in a long log) are skipped,
    not taken for the end of the log: a follower of an ended VM stops at the first empty read."""
    p = _paths(tmp_path)
    _append(p.stdout, b"".join(f"out {i} {'o' * 300}\n".encode() for i in range(500)))
    lines = convert(p)
    reader = LogReader(p, after_seq=lines[-10].seq)
    assert [x.seq for x in reader.read_new(4096)] == [x.seq for x in lines[-9:]]
    assert reader.read_new(4096) == []


def _read_both(p, after_seq=0, max_bytes=4096):
    """Everything new, read by read_new and by read_records with readers that started alike."""
    old, raw = LogReader(p, after_seq), LogReader(p, after_seq)
    lines, chunks = [], []
    while batch := old.read_new(max_bytes):
        lines.extend(batch)
    while chunk := raw.read_records(max_bytes):
        chunks.append(chunk)
    return lines, chunks


def _assert_same(lines, chunks):
    """read_records returned the very records read_new decoded, and says their first and last seq."""
    records = [r for c in chunks for r in c.records]
    assert [json.loads(r)["seq"] for r in records] == [x.seq for x in lines]
    for c in chunks:
        assert (c.first_seq, c.last_seq) == (record_seq(c.records[0]), record_seq(c.records[-1]))
        assert all(not r.endswith(b"\n") and b"\x00" not in r for r in c.records)


@pytest.mark.parametrize("after_seq", [0, 1, 37, 120, 500])
def test_raw_records_skip_up_to_after_seq_like_read_new(tmp_path, after_seq):
    p = _paths(tmp_path)
    _append(p.stdout, b"".join(f"line {i} {'z' * (i % 50)}\n".encode() for i in range(120)))
    convert(p)
    lines, chunks = _read_both(p, after_seq)
    _assert_same(lines, chunks)
    assert [x.seq for x in lines] == list(range(after_seq + 1, 121))
    assert len(chunks) > 1 or after_seq >= 100  # small reads: the skipping spans several of them


def test_raw_records_longer_than_a_read_come_whole(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"short\n" + b"\x01" * (MAX_LINE_BYTES * 2) + b"\n" + "\u20ac".encode() * 20000 + b"\nend\n")
    convert(p)
    lines, chunks = _read_both(p, max_bytes=1024)
    _assert_same(lines, chunks)
    assert max(len(r) for c in chunks for r in c.records) > 6 * MAX_LINE_BYTES  # escaped to 6 bytes each
    assert [len(x.message) for x in lines] == [5, MAX_LINE_BYTES, MAX_LINE_BYTES, 20000, 3]


def test_raw_records_wait_for_a_torn_tail_and_follow_new_records(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"a\nb\n")
    convert(p)
    reader = LogReader(p)
    _append(p.logs, b'{"seq": 3, "ts": 1.0, "stream": "stdout", "mess')  # a converter killed mid-write
    chunk = reader.read_records()
    assert (chunk.first_seq, chunk.last_seq, len(chunk.records)) == (1, 2, 2)
    assert reader.read_records() is None  # the torn record is not a record
    _append(p.stdout, b"c\n")
    convert(p)  # cuts the tear off, then appends seq 3 for real
    (again,) = [reader.read_records()]
    assert [json.loads(r)["message"] for r in again.records] == ["c"] and again.first_seq == again.last_seq == 3


def test_raw_records_skip_trimmed_regions_like_read_new(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"".join(f"out {i} {'o' * 300}\n".encode() for i in range(5000)))
    lines = convert(p)
    trim(p, lines[-40].seq)
    fresh_lines, fresh_chunks = _read_both(p, max_bytes=2048)  # a reader starting in the hole
    _assert_same(fresh_lines, fresh_chunks)
    assert fresh_chunks[0].first_seq == lines[-40].seq and fresh_chunks[-1].last_seq == lines[-1].seq
    lines, chunks = _read_both(p, after_seq=lines[-10].seq)
    _assert_same(lines, chunks)
    assert len(lines) == 9


def test_raw_records_make_the_frame_the_old_encode_made(tmp_path):
    """What the plane gets from a frame joined from the records is exactly what it got from the
    records decoded into LogEntry and encoded again."""
    p = _paths(tmp_path)
    _append(p.stdout, "\n".join(AWKWARD).encode() + b"\n\xc3\x28 invalid\n" + b"\x02" * (MAX_LINE_BYTES + 3) + b"\n")
    _append(p.stderr, b'"quoted"\r\n\\\n')
    convert(p, clock=lambda: 1700000000.123456)
    lines, chunks = _read_both(p, max_bytes=1 << 20)
    (chunk,) = chunks
    old = protocol.Logs(replica_id="r-\u00e9\"1", lines=[entry(x) for x in lines])
    text = protocol.encode_logs_records("r-\u00e9\"1", chunk.records)
    assert protocol.decode(text, allowed=protocol.AGENT_MESSAGES) == protocol.decode(protocol.encode(old)) == old
    assert text.startswith('{"type":"logs","version":%d,"replica_id":' % protocol.PROTOCOL_VERSION)
    assert protocol.decode(protocol.encode_logs_records("r", [])) == protocol.Logs(replica_id="r", lines=[])


def _disk(path) -> int:
    return os.stat(path).st_blocks * 512


def test_trim_gives_back_the_disk_of_acknowledged_lines_and_everything_else_still_works(tmp_path):
    p = _paths(tmp_path)
    _append(p.stdout, b"".join(f"out {i} {'o' * 200}\n".encode() for i in range(20000)))
    _append(p.stderr, b"".join(f"err {i}\n".encode() for i in range(2000)))
    lines = convert(p)
    sizes = {path: os.stat(path).st_size for path in (p.stdout, p.stderr, p.logs)}
    used = {path: _disk(path) for path in sizes}
    acked = lines[-100].seq
    freed = trim(p, acked)
    assert freed > 0.8 * (used[p.stdout] + used[p.logs])
    assert {path: os.stat(path).st_size for path in sizes} == sizes  # offsets stay valid
    assert _disk(p.stdout) < used[p.stdout] / 10 and _disk(p.logs) < used[p.logs] / 10
    assert "err 1999" in last_lines(p.stderr)[-1]  # a crash reason still has its stderr tail
    # What was not acknowledged is all still there, for a resume or a fresh reader.
    assert [x.seq for x in LogReader(p, after_seq=acked).read_all()] == [x.seq for x in lines[-99:]]
    assert LogReader(p).read_all()[0].seq == acked  # the acknowledged record itself is kept
    _append(p.stderr, b"later\n")
    (later,) = convert(p)
    assert later.seq == lines[-1].seq + 1 and later.message == "later"
    assert _last_record(os.open(p.logs, os.O_RDWR))["seq"] == later.seq
    assert trim(p, acked) == 0  # done already
    assert trim(p, later.seq) >= 0 and LogReader(p).read_all()[-1].message == "later"


def test_a_reader_ahead_of_the_trims_gets_every_line_while_trims_punch_behind_it(tmp_path):
    """As the shipper runs: its reader is ahead of what the plane acknowledged, trims follow the
    acknowledgements, conversion goes on. The reader never trips over a hole or loses a line."""
    import threading

    p = _paths(tmp_path)
    reader = LogReader(p)
    got: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def trimmer():
        try:
            while not stop.is_set():
                if got:
                    trim(p, max(0, got[-1] - 50))
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=trimmer)
    thread.start()
    try:
        for chunk in range(200):
            _append(p.stdout, b"".join(f"{chunk}.{i} {'x' * 500}\n".encode() for i in range(100)))
            convert(p)
            got.extend(x.seq for x in reader.read_new())
        got.extend(x.seq for x in reader.read_all())
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert got == list(range(1, 20001))
    assert _disk(p.stdout) < 2 * 1024 * 1024  # 10 MB printed, a small tail kept


_CONVERTER = """
import sys, time
from pathlib import Path
from nodes.agent.logs import convert
from nodes.agent.state import VmPaths
p = VmPaths(Path(sys.argv[1]))
print("ready", flush=True)
while True:
    convert(p)
"""


def test_sigkill_at_any_point_loses_or_repeats_no_line(tmp_path):
    """A converter process is SIGKILLed again and again while both streams grow; every line
    must end up in logs.jsonl exactly once, in stream order, with contiguous seq."""
    p = _paths(tmp_path)
    rnd = random.Random(10)
    n = 6000
    pending = {"stdout": [f"out {i} {'o' * rnd.randint(0, 300)}\n".encode() for i in range(n)],
               "stderr": [f"err {i}\n".encode() for i in range(n)]}
    data = {k: b"".join(v) for k, v in pending.items()}
    written = {"stdout": 0, "stderr": 0}
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    kills = 0
    while kills < 25:
        proc = subprocess.Popen([sys.executable, "-c", _CONVERTER, str(p.dir)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + rnd.uniform(0.01, 0.15)
        while time.monotonic() < deadline:
            for stream in ("stdout", "stderr"):
                # Arbitrary chunk sizes: lines arrive split anywhere.
                step = rnd.randint(1, 20000)
                chunk = data[stream][written[stream] : written[stream] + step]
                _append(getattr(p, stream), chunk)
                written[stream] += len(chunk)
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    for stream in ("stdout", "stderr"):
        _append(getattr(p, stream), data[stream][written[stream] :])
    convert(p, final=True)
    lines = LogReader(p).read_all()
    assert [x.seq for x in lines] == list(range(1, 2 * n + 1))
    for stream in ("stdout", "stderr"):
        got = [x.message + "\n" for x in lines if x.stream == stream]
        assert got == [b.decode() for b in pending[stream]]
