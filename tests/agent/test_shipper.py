"""Log shipping (nodes/agent/shipper.py): resume after the plane's acknowledged seq across a
reconnect, a bounded window of unacknowledged batches, batches well under the frame limit, and
a removed replica's last lines acknowledged before its VM (and log) is deleted."""

from __future__ import annotations

import asyncio
import json

import pytest

from protocol import wire as protocol
from nodes.agent.logs import LogLine, LogRecords
from nodes.agent.shipper import BATCH_BYTES, LogShipper, entry
from protocol.wire import Desired, DesiredReplica, Logs, ReplicaSpec, ReplicaStop
from tests.agent.plane import FakePlane, Node, eventually, plane, data_dir, replica  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def counting(n: int) -> str:
    return f'i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo "line $i"; done; sleep 60'


def assert_stored_exactly(plane: FakePlane, replica_id: str, n: int) -> None:
    stored = plane.stored.get(replica_id, {})
    assert sorted(stored) == list(range(1, n + 1))
    assert all(line.message == f"line {seq}" and line.stream == "stdout" for seq, line in stored.items())
    assert plane.duplicates == 0


async def test_logs_resume_after_the_acked_seq_across_a_reconnect_with_no_line_lost_or_repeated(plane, data_dir):
    batches = []

    def first_connection_breaks(conn, message):
        if conn is not plane.connections[0]:
            return True
        batches.append(message)
        if len(batches) == 2:
            # Stored, then the connection dies before the ack leaves: the next desired says so.
            plane.stored.setdefault(message.replica_id, {}).update({line.seq: line for line in message.lines})
            conn.ws.transport.abort()
            return False
        return len(batches) < 2  # later batches were in flight when it died: never stored

    plane.on_logs = first_connection_breaks
    plane.desired["r"] = replica("r", counting(3000))
    node = await Node(data_dir, plane).start()
    await eventually(lambda: len(plane.connections) == 2, what="reconnect")
    await eventually(lambda: len(plane.stored.get("r", {})) == 3000, timeout=30, what="3000 lines stored")
    assert_stored_exactly(plane, "r", 3000)
    resumed_after = plane.connections[1].desired_acks["r"]
    assert resumed_after == batches[1].lines[-1].seq
    again = [line.seq for m in plane.messages("logs", conn=1) for line in m.lines]
    assert again[0] == resumed_after + 1 and again == sorted(set(again))  # nothing acked was resent
    assert all(len(m.lines) <= protocol.MAX_LOG_BATCH_LINES for m in plane.messages("logs"))
    await node.stop()


async def test_heartbeats_say_how_far_each_replicas_log_goes(data_dir):
    plane = await FakePlane(auto_ack=False, heartbeat_interval_s=0.3).start()
    plane.desired["r"] = replica("r", counting(700))
    node = await Node(data_dir, plane).start()
    # The plane acknowledged nothing: should the node now go silent, it knows 700 are missing.
    await eventually(lambda: any(m.log_seqs.get("r") == 700 for m in plane.messages("heartbeat")),
                     timeout=20, what="a heartbeat naming seq 700")
    await node.stop()
    await plane.close()


async def read_past_what_it_sent(node: Node, plane: FakePlane) -> None:
    """Returns once the shipper holds lines of "r" it has not sent, and the plane has everything
    the node queued after that: any batch not held back by the window would have arrived."""
    sent = plane.messages("logs")[-1].lines[-1].seq
    await eventually(lambda: node.daemon.shipper.last_seq("r") > sent, what="lines read but not sent")
    await node.said(plane)


async def test_unacknowledged_batches_in_flight_are_bounded_and_acks_open_the_window(data_dir):
    n = 10 * protocol.MAX_LOG_BATCH_LINES  # more than a full window of the largest batches holds
    plane = await FakePlane(auto_ack=False).start()
    plane.desired["r"] = replica("r", counting(n))
    node = await Node(data_dir, plane).start()
    await eventually(lambda: len(plane.messages("logs")) == 4, what="a full window")
    await read_past_what_it_sent(node, plane)
    assert len(plane.messages("logs")) == 4  # the VM printed n lines; the agent waits
    first = plane.messages("logs")[0].lines[-1].seq
    await plane.ack("r", seq=first)
    await eventually(lambda: len(plane.messages("logs")) == 5, what="one more batch")
    await read_past_what_it_sent(node, plane)
    assert len(plane.messages("logs")) == 5
    plane.auto_ack = True
    await plane.ack("r")
    await eventually(lambda: len(plane.stored.get("r", {})) == n, timeout=30, what="all lines")
    assert_stored_exactly(plane, "r", n)
    await node.stop()
    await plane.close()


def watch_drains(node: Node) -> dict[str, asyncio.Future]:
    """Each replica's drain (the supervisor's wait for its last lines) as a future, by replica."""
    shipper = node.daemon.shipper
    drain = shipper.drain
    drains: dict[str, asyncio.Future] = {}

    async def watched(replica_id, *, timeout):
        drains[replica_id] = asyncio.ensure_future(drain(replica_id, timeout=timeout))
        return await asyncio.shield(drains[replica_id])

    shipper.drain = watched
    return drains


async def test_a_stopped_replica_is_removed_only_once_its_last_lines_are_acknowledged(data_dir):
    plane = await FakePlane(auto_ack=False).start()
    plane.desired["r"] = replica("r", 'echo "line 1"; echo "line 2"; sleep 60')
    node = await Node(data_dir, plane).start()
    drains = watch_drains(node)
    await eventually(lambda: len(plane.stored.get("r", {})) == 2, what="two lines received")
    # Lines can be stored before the start is done; a stop then cancels the start, which reports
    # `stopped` only once the VM is removed. This is about a replica that ran.
    await eventually(lambda: "running" in plane.states("r"), what="running")
    await plane.send(ReplicaStop(command_id="c-1", replica_id="r", grace_s=1))
    await eventually(lambda: "stopped" in plane.states("r"), what="stopped")
    await eventually(lambda: "r" in drains, what="the removal waiting for the last lines")
    assert not drains["r"].done() and (data_dir / "vms" / "r").exists()  # waiting for the ack of its last batch
    await plane.ack("r")
    await eventually(lambda: not (data_dir / "vms" / "r").exists(), what="removed after the ack")
    assert drains["r"].result() is True  # removed because the lines were acknowledged, not on the timeout
    assert_stored_exactly(plane, "r", 2)
    await node.stop()
    await plane.close()


def record(line: LogLine) -> bytes:
    """The line as logs.jsonl holds it."""
    fields = {"seq": line.seq, "ts": line.ts, "stream": line.stream, "message": line.message}
    return json.dumps({**fields, **({"continued": True} if line.continued else {}), "off": [9, 9]},
                      ensure_ascii=False).encode()


class Source:
    """A finished VM's log, as runtime.log_record_chunks() yields it; records what trim_logs was
    asked."""

    def __init__(self, lines, read_lines=700):
        self.lines = lines
        self.read_lines = read_lines
        self.trims: list[int] = []

    async def log_record_chunks(self, name, after_seq=0, follow=False):
        lines = [line for line in self.lines if line.seq > after_seq]
        for i in range(0, len(lines), self.read_lines):  # reads of the file, as the runtime yields them
            read = lines[i:i + self.read_lines]
            yield LogRecords(read[0].seq, read[-1].seq, [record(line) for line in read])

    async def trim_logs(self, name, upto_seq):
        self.trims.append(upto_seq)
        return 0


def shipper_over(lines, *, ack=True, read_lines=700, **options):
    """A shipper of `lines` whose frames are decoded as the plane decodes them: `sent` holds the
    Logs messages and `frames` the frames' text."""
    sent: list[Logs] = []
    frames: list[str] = []

    async def send(frame):
        message = protocol.decode(frame, allowed=protocol.AGENT_MESSAGES)
        sent.append(message)
        frames.append(frame)
        if ack:
            shipper.ack(message.replica_id, message.lines[-1].seq)
        return True

    shipper = LogShipper(Source(lines, read_lines), send, state_of=lambda _: "stopped", poll_s=0.01, **options)
    shipper.resume(Desired(replicas=[DesiredReplica("r", ReplicaSpec(name="r", image="x"))]))
    shipper.frames = frames
    return shipper, sent


async def test_batches_stay_well_under_the_frame_limit_whatever_the_lines():
    long = "\x01" * 16 * 1024  # control characters escape to six bytes each
    lines = [LogLine(i, 1.0, "stderr", long if i % 3 else "short") for i in range(1, 601)]
    shipper, sent = shipper_over(lines)
    assert await shipper.drain("r", timeout=10)
    assert [line.seq for m in sent for line in m.lines] == list(range(1, 601))
    assert [line for m in sent for line in m.lines] == [entry(line) for line in lines]
    sizes = [len(frame.encode()) for frame in shipper.frames]
    assert all(size <= BATCH_BYTES < protocol.MAX_FRAME_BYTES for size in sizes)
    for size, following in zip(sizes, sent[1:]):  # and each as full as the limit allows
        assert size + 1 + len(record(lines[following.lines[0].seq - 1])) > BATCH_BYTES
    n = protocol.MAX_LOG_BATCH_LINES
    small = [LogLine(i, 1.0, "stdout", "x") for i in range(1, 2 * n + 2)]
    shipper, sent = shipper_over(small, read_lines=len(small))  # one read holds more than a batch may
    assert await shipper.drain("r", timeout=10)
    assert [len(m.lines) for m in sent] == [n, n, 1]


async def test_a_record_bigger_than_a_batch_goes_alone_and_frames_never_pass_the_limit():
    big = "\x01" * protocol.MAX_LOG_LINE_CHARS  # escapes to six bytes each: 384 KiB of JSON
    lines = [LogLine(1, 1.0, "stdout", "a"), LogLine(2, 1.0, "stdout", big), LogLine(3, 1.0, "stdout", "b")]
    shipper, sent = shipper_over(lines)
    assert await shipper.drain("r", timeout=10)
    assert [[line.seq for line in m.lines] for m in sent] == [[1], [2], [3]]
    assert sent[1].lines[0].message == big
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.encode_logs_records("r", [record(lines[1])] * 3)


async def test_drain_waits_for_the_ack_and_gives_up_after_its_timeout():
    shipper, sent = shipper_over([LogLine(1, 1.0, "stdout", "a"), LogLine(2, 1.0, "stdout", "b")], ack=False)
    assert await shipper.drain("r", timeout=0.3) is False
    assert [line.seq for m in sent for line in m.lines] == [1, 2] and shipper.last_seq("r") == 2
    waiting = asyncio.create_task(shipper.drain("r", timeout=5))
    await asyncio.sleep(0.05)
    shipper.ack("r", 2)
    assert await waiting is True
    assert await shipper.drain("never-shipped", timeout=5) is True


async def test_nothing_ships_while_disconnected_and_a_line_too_long_is_cut_not_split():
    shipper, sent = shipper_over([LogLine(1, 1.0, "stdout", "a")])
    shipper.disconnected()
    shipper.track("r", 0)
    assert await shipper.drain("r", timeout=5)  # had it followed "r", this would wait for line 1's ack
    assert sent == []
    cut = entry(LogLine(7, 1.0, "stdout", "y" * (protocol.MAX_LOG_LINE_CHARS + 10)))
    assert cut.seq == 7 and len(cut.message) == protocol.MAX_LOG_LINE_CHARS
    # A record on disk with a longer message goes out cut the same way, in order with the rest.
    lines = [LogLine(6, 1.0, "stdout", "x"), LogLine(7, 1.5, "stderr", "\u20ac" * (protocol.MAX_LOG_LINE_CHARS + 10), True)]
    shipper, sent = shipper_over(lines)
    assert await shipper.drain("r", timeout=10)
    assert [line for m in sent for line in m.lines] == [entry(line) for line in lines]
    assert len(sent[-1].lines[-1].message) == protocol.MAX_LOG_LINE_CHARS and sent[-1].lines[-1].continued


async def test_acknowledged_lines_are_trimmed_from_the_node_every_so_many():
    lines = [LogLine(i, 1.0, "stdout", "x") for i in range(1, 2501)]
    shipper, sent = shipper_over(lines, trim_every=1000)
    assert await shipper.drain("r", timeout=10)
    trims = await eventually(lambda: shipper.runtime.trims, what="a trim")
    assert all(b - a >= 1000 for a, b in zip([0, *trims], trims)) and trims[-1] <= 2500
    unacked, unacked_sent = shipper_over(lines, ack=False, trim_every=1000)
    await eventually(lambda: unacked_sent and unacked_sent[-1].lines[-1].seq == 2500, what="every line sent")
    assert unacked.runtime.trims == []  # nothing is trimmed before the plane has it
