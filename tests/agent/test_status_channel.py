"""The guest's status channel is hostile input (issue 23, the meter): whatever a guest writes
there, or on its stderr, the agent neither crashes nor stalls, nor builds a report the plane
would refuse. A report the plane refuses is an end never recorded: a meter that never closes
and GPUs never freed.

The reader is tested on files a guest could have written (QEMU appends the port's bytes to
status.raw unchanged); the runtime test runs the real MicroVmRuntime with the fake guest of
tests/agent/fakes.py (a host process that behaves like /init), and the real-QEMU version of
the status attack is tests/agent/test_meter_guest.py (in a namespace it makes).

No VM boots, no network device is made and no packet is sent here (FakeVmm, FakeNetwork: the
fake guest is a host process with no port), so these tests need no namespace of their own.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest

from nodes.agent.lifecycle import MAX_REASON_CHARS, MAX_STATUS_LINE, StatusReader, read_status
from protocol.wire import ReplicaSpec
from tests.agent.test_runtime import make_runtime, ns, parts, wait_state  # noqa: F401 (fixtures)


def final(**fields) -> bytes:
    return json.dumps({"event": "final", "attempts": 1, "stopped": False, "ts": 0, **fields}).encode() + b"\n"


@pytest.mark.parametrize("code", ["0", "x", [0], True, 1.5, None, {"a": 1}, 1 << 70])
def test_an_end_record_whose_code_is_not_an_exit_code_is_noise(tmp_path, code):
    path = tmp_path / "status.raw"
    path.write_bytes(b'{"event":"start","attempt":1,"ts":0}\n' + final(code=code))
    status = read_status(path)
    assert status.starts == 1 and not status.final and status.last_event == "start"


def test_lines_that_would_crash_a_json_parser_or_are_not_records_are_skipped(tmp_path):
    path = tmp_path / "status.raw"
    path.write_bytes(b"[" * 200_000 + b"\n" + b"\xff\xfe\n" + b"[1,2]\n" + b'"final"\n' + final(code=3))
    status = read_status(path)
    assert status.final_code == 3


def test_an_end_record_with_a_huge_error_gives_a_reason_the_plane_stores(tmp_path):
    path = tmp_path / "status.raw"
    path.write_bytes(final(code=125, error="e" * 3000))
    status = read_status(path)
    assert status.final_code == 125 and len(status.final_error) == MAX_REASON_CHARS


def test_a_flooded_channel_is_read_once_in_bounded_memory_and_the_end_after_it_still_counts(tmp_path):
    path = tmp_path / "status.raw"
    with open(path, "wb") as f:
        for _ in range(48):
            f.write(b"x" * (1 << 20))  # one 48 MiB line, no newline yet
    reader = StatusReader()
    tracemalloc.start()
    assert not reader.read(path).final
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held to read a 48 MiB line"
    assert reader.offset == 48 << 20 and len(reader._partial) <= MAX_STATUS_LINE
    with open(path, "ab") as f:
        f.write(b"x" * 100 + b"\n" + final(code=0))
    assert reader.read(path).final_code == 0  # the overlong line ended and was dropped; the next one counts
    assert reader.offset == path.stat().st_size


def test_a_record_split_across_two_reads_is_parsed_once_whole(tmp_path):
    path = tmp_path / "status.raw"
    record = final(code=7)
    path.write_bytes(record[:10])
    reader = StatusReader()
    assert not reader.read(path).final
    with open(path, "ab") as f:
        f.write(record[10:])
    assert reader.read(path).final_code == 7


async def test_a_crash_with_a_long_stderr_is_reported_with_a_reason_the_plane_stores(tmp_path, parts):  # noqa: F811
    rt = make_runtime(tmp_path, parts)
    spec = ReplicaSpec(name="loud", image="sh", args=["head -c 20000 /dev/zero | tr '\\0' x >&2; echo >&2; exit 3"])
    await rt.start(spec)
    info = await wait_state(rt, "loud", {"failed"}, timeout=20)
    assert info.exit_code == 3
    assert info.reason.startswith("exited with code 3") and len(info.reason) <= MAX_REASON_CHARS
    await rt.close()
