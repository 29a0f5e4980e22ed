"""protocol/wire.py: every message survives encode/decode unchanged, and every frame the
protocol must refuse is refused with a ProtocolError naming what is wrong."""

from __future__ import annotations

import json

import pytest

from protocol import wire as protocol
from protocol.wire import (
    Desired, DesiredReplica, Error, Heartbeat, Hello, Inventory, LogEntry, Logs, LogsAck, NodeDrain, ProtocolError,
    ReplicaReport, ReplicaSpec, ReplicaStart, ReplicaStatus, ReplicaStop,
)

INVENTORY = Inventory(hostname="node-1", agent_version="0.1.0", cpus=16, memory_mib=65536, disk_gib=400,
                      accelerator="kvm")
SPEC = ReplicaSpec(name="r-42", image="127.0.0.1:5000/gantry/hello:latest", env={"A": "1"},
                   secret_env={"TOKEN": "s3cret"}, entrypoint=["/bin/hello"], args=["--serve"], traffic_port=8080,
                   ports=[22, 9000], vcpus=2, memory_mib=512, registry_username="u", registry_password="p")
DESIRED_REPLICA = DesiredReplica(replica_id="r-42", spec=SPEC, stop_grace_s=30.0, acked_seq=7)

EVERY_MESSAGE = [
    Hello(inventory=INVENTORY, replicas=[ReplicaReport("r-42", "running", address="172.31.240.2", host_port=20001,
                                                       started_at=1700000000.5, log_seq=12,
                                                       host_ports={"8080": 20001, "22": 20002})]),
    Heartbeat(load1=0.25, free_disk_gib=123.5, gpu_health=[{"index": 0, "ok": True}], log_seqs={"r-1": 7}),
    ReplicaStatus(ReplicaReport("r-42", "pulling", reason="pulling 312/870 MB")),
    ReplicaStatus(ReplicaReport("r-42", "failed", reason="exited with code 3", exit_code=3)),
    Logs(replica_id="r-42", lines=[LogEntry(1, 1.5, "stdout", "hi"), LogEntry(2, 1.6, "stderr", "ünïcode ✓")]),
    Desired(replicas=[DESIRED_REPLICA], heartbeat_interval_s=2.0),
    Desired(replicas=[]),
    ReplicaStart(command_id="c-1", replica=DESIRED_REPLICA),
    ReplicaStop(command_id="c-2", replica_id="r-42", grace_s=5.0),
    NodeDrain(command_id="c-3"),
    LogsAck(replica_id="r-42", seq=500),
    Error(message="unknown replica", refused_type="replica.status"),
]


def frame(kind: str, **fields) -> str:
    return json.dumps({"type": kind, "version": protocol.PROTOCOL_VERSION, **fields})


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: m.type)
def test_every_message_round_trips(message):
    text = protocol.encode(message)
    assert json.loads(text)["type"] == message.type and json.loads(text)["version"] == protocol.PROTOCOL_VERSION
    assert protocol.decode(text) == message
    assert protocol.decode(text.encode()) == message


def test_each_side_accepts_only_the_other_sides_messages():
    hello = protocol.encode(EVERY_MESSAGE[0])
    desired = protocol.encode(Desired(replicas=[]))
    assert protocol.decode(hello, allowed=protocol.AGENT_MESSAGES).type == "hello"
    assert protocol.decode(desired, allowed=protocol.PLANE_MESSAGES).type == "desired"
    with pytest.raises(ProtocolError, match="unknown message type 'hello'"):
        protocol.decode(hello, allowed=protocol.PLANE_MESSAGES)
    with pytest.raises(ProtocolError, match="unknown message type 'desired'"):
        protocol.decode(desired, allowed=protocol.AGENT_MESSAGES)


def test_oversized_frames_are_refused_unread_and_never_encoded():
    big = frame("logs", replica_id="r", lines=[], pad="x" * protocol.MAX_FRAME_BYTES)
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode(big)
    lines = [LogEntry(i, 0.0, "stdout", "y" * 60_000) for i in range(1, 30)]
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.encode(Logs(replica_id="r", lines=lines))


@pytest.mark.parametrize("text, reason", [
    ("not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"version": 1}), "unknown message type 'None'"),
    (frame("replica.explode"), "unknown message type 'replica.explode'"),
    (json.dumps({"type": "heartbeat"}), "version 'None' is not supported"),
    (json.dumps({"type": "heartbeat", "version": 2}), "version '2' is not supported"),
    (frame("logs.ack", replica_id="r"), r"logs.ack.seq is required"),
])
def test_malformed_unknown_and_wrong_version_frames_are_refused(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(text)


@pytest.mark.parametrize("fields, reason", [
    ({"replica_id": "r", "seq": "5"}, "seq must be an integer"),
    ({"replica_id": "r", "seq": True}, "seq must be an integer"),
    ({"replica_id": "r", "seq": 1.5}, "seq must be an integer"),
    ({"replica_id": 7, "seq": 1}, "replica_id must be a string"),
    ({"replica_id": None, "seq": 1}, "replica_id must be a string"),
    ({"replica_id": "r", "seq": None}, "seq must be an integer"),
])
def test_wrong_field_types_are_refused(fields, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(frame("logs.ack", **fields))


def test_nested_fields_are_checked_all_the_way_down():
    spec = {**SPEC.to_dict(), "env": {"A": 1}}
    with pytest.raises(ProtocolError, match=r"desired.replicas\[0\].spec.env.A must be a string"):
        protocol.decode(frame("desired", replicas=[{"replica_id": "r-42", "spec": spec}]))
    with pytest.raises(ProtocolError, match="must be a list"):
        protocol.decode(frame("desired", replicas={"r-42": {}}))
    with pytest.raises(ProtocolError, match="must be true or false"):
        protocol.decode(frame("hello", inventory={**INVENTORY.__dict__, "simulated": "no"}))
    with pytest.raises(ProtocolError, match="heartbeat.load1 must be a number"):
        protocol.decode(frame("heartbeat", load1="high"))
    report = {"replica_id": "r", "state": "running", "host_port": None, "exit_code": None}
    assert protocol.decode(frame("replica.status", report=report)).report.host_port is None  # optional: null ok
    with pytest.raises(ProtocolError, match="report.log_seq must be an integer"):
        protocol.decode(frame("replica.status", report={**report, "log_seq": None}))


def test_bad_states_streams_and_seqs_are_refused():
    with pytest.raises(ProtocolError, match="state must be one of"):
        protocol.decode(frame("replica.status", report={"replica_id": "r", "state": "exploded"}))
    with pytest.raises(ProtocolError, match="state must be one of"):
        protocol.decode(frame("replica.status", report={"replica_id": "r", "state": "lost"}))  # plane-only
    line = {"seq": 1, "ts": 0.0, "stream": "stdout", "message": "x"}
    with pytest.raises(ProtocolError, match="stream must be one of"):
        protocol.decode(frame("logs", replica_id="r", lines=[{**line, "stream": "stdlog"}]))
    with pytest.raises(ProtocolError, match="counts from 1"):
        protocol.decode(frame("logs", replica_id="r", lines=[{**line, "seq": 0}]))
    with pytest.raises(ProtocolError, match="seq order"):
        protocol.decode(frame("logs", replica_id="r", lines=[{**line, "seq": 2}, line]))
    with pytest.raises(ProtocolError, match="at most"):
        protocol.decode(frame("logs", replica_id="r", lines=[{**line, "message": "x" * (protocol.MAX_LOG_LINE_CHARS + 1)}]))
    lines = [{**line, "seq": i} for i in range(1, protocol.MAX_LOG_BATCH_LINES + 2)]
    with pytest.raises(ProtocolError, match=f"at most {protocol.MAX_LOG_BATCH_LINES} lines"):
        protocol.decode(frame("logs", replica_id="r", lines=lines))


def test_a_desired_replica_is_named_after_its_id_and_the_set_is_capped():
    other = {**SPEC.to_dict(), "name": "r-43"}
    with pytest.raises(ProtocolError, match="named after its replica_id"):
        protocol.decode(frame("desired", replicas=[{"replica_id": "r-42", "spec": other}]))
    many = [{"replica_id": f"r{i}", "spec": {**SPEC.to_dict(), "name": f"r{i}"}}
            for i in range(protocol.MAX_DESIRED_REPLICAS + 1)]
    with pytest.raises(ProtocolError, match="at most 256 replicas"):
        protocol.decode(frame("desired", replicas=many))


def test_unknown_fields_are_ignored_and_defaults_fill_in():
    message = protocol.decode(frame("heartbeat", load1=1, from_the_future=True))
    assert message == Heartbeat(load1=1.0)


def test_extra_ports_and_host_ports_are_optional_within_version_1_and_typed():
    # An older plane's spec has no ports, an older agent's report no host_ports: both decode.
    old_spec = {k: v for k, v in SPEC.to_dict().items() if k != "ports"}
    desired = protocol.decode(frame("desired", replicas=[{"replica_id": "r-42", "spec": old_spec}]))
    assert desired.replicas[0].spec.ports == []
    report = {"replica_id": "r", "state": "running", "host_port": 30001}
    assert protocol.decode(frame("replica.status", report=report)).report.host_ports == {}
    with pytest.raises(ProtocolError, match=r"spec.ports\[1\] must be an integer"):
        protocol.decode(frame("desired", replicas=[{"replica_id": "r-42", "spec": {**old_spec, "ports": [22, "80"]}}]))
    for bad in ({"8080": "30001"}, {"8080": None}, {"8080": True}, ["8080"]):
        with pytest.raises(ProtocolError, match="report.host_ports"):
            protocol.decode(frame("replica.status", report={**report, "host_ports": bad}))


def test_redacted_spec_hides_secret_values_and_the_password():
    shown = json.dumps(SPEC.redacted())
    assert "s3cret" not in shown and '"p"' not in shown and "TOKEN" in shown


def test_log_entries_read_by_the_one_pass_checker_equal_the_general_checkers():
    entries = [{"seq": 1, "ts": 1.5, "stream": "stdout", "message": "plain"},
               {"seq": 2, "ts": 2.0, "stream": "stderr", "message": "\x1b[31m\u00e9\"", "continued": True, "off": [3, 4]},
               {"seq": 3, "ts": 3, "stream": "stdout", "message": "an integer ts"},  # only the general checker takes it
               {"seq": 4, "ts": 4.0, "stream": "stdout", "message": "x" * protocol.MAX_LOG_LINE_CHARS}]
    fast, general = protocol._log_entry_checker(), protocol._dataclass_checker(LogEntry)
    assert [fast(e) for e in entries] == [general(e) for e in entries]
    assert fast(entries[2]).ts == 3.0 and type(fast(entries[2]).ts) is float
    for bad in ({"seq": 0, "ts": 1.0, "stream": "stdout", "message": ""}, {"seq": 1, "ts": 1.0, "stream": ["x"], "message": ""},
                {"seq": 1, "ts": 1.0, "stream": "stdout", "message": "x" * (protocol.MAX_LOG_LINE_CHARS + 1)},
                {"seq": 1, "ts": 1.0, "stream": "stdout", "message": "", "continued": 1}, ["not", "an", "object"]):
        with pytest.raises(protocol._Bad):
            fast(bad)


@pytest.mark.parametrize("ports", [
    {"host_port": 0}, {"host_port": 65536}, {"host_port": -1},
    {"host_ports": {"8080": 70000}}, {"host_ports": {"0": 30000}}, {"host_ports": {"http": 30000}},
    {"host_ports": {"٨٠": 30000}}, {"host_ports": {"99999": 30001}},
])
def test_a_published_port_out_of_range_is_refused_before_it_can_reach_a_route_table(ports):
    with pytest.raises(ProtocolError, match="host_port"):
        protocol.decode(frame("replica.status", report={"replica_id": "r", "state": "running", **ports}))
    ok = {"replica_id": "r", "state": "running", "host_port": 30000, "host_ports": {"8080": 30000, "22": 65535}}
    assert protocol.decode(frame("replica.status", report=ok)).report.host_ports == {"8080": 30000, "22": 65535}


@pytest.mark.parametrize("text", [
    '{"type":"heartbeat","version":1,"free_volume_gib":NaN}',
    '{"type":"heartbeat","version":1,"free_volume_gib":Infinity}',
    '{"type":"heartbeat","version":1,"free_volume_gib":-1.5}',
    '{"type":"heartbeat","version":1,"free_volume_gib":1e300}',
])
def test_a_heartbeats_volume_room_must_be_a_real_bounded_number(text):
    # NaN compares false with every size, so placement would read it as room or none at random.
    with pytest.raises(ProtocolError, match="free_volume_gib"):
        protocol.decode(text)
    assert protocol.decode('{"type":"heartbeat","version":1,"free_volume_gib":0}').free_volume_gib == 0


@pytest.mark.parametrize("volumes", [{"../x": 1}, {"a": 0}, {"a": 16385}, {"A": 1}, {"a/b": 2}])
def test_a_heartbeats_volume_list_names_ids_and_sizes(volumes):
    with pytest.raises(ProtocolError, match="volumes"):
        protocol.decode(json.dumps({"type": "heartbeat", "version": 1, "free_volume_gib": 5, "volumes": volumes}))
