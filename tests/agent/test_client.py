"""The daemon's connection to the plane (nodes/agent/client.py), against a real WebSocket
server playing the plane: hello on every connect (adopted VMs included), reconnects with
backoff, a refused credential, heartbeats, and frames from the plane it must survive."""

from __future__ import annotations

import logging

import pytest

from nodes.agent.client import AgentClient
from nodes.agent.join import Credential
from protocol.wire import Error, Heartbeat, ReplicaSpec
from tests.agent.plane import FakePlane, Node, eventually, make_runtime, plane, data_dir, replica  # noqa: F401

pytestmark = pytest.mark.timeout(60)


async def test_hello_reports_vms_adopted_from_before_the_agent_started(plane, data_dir):
    earlier = make_runtime(data_dir)
    await earlier.start(ReplicaSpec(name="r-1", image="sh", args=["echo up; sleep 60"]))
    before = await earlier.get("r-1")
    await earlier.close()  # the agent is gone; its VM is not
    plane.desired["r-1"] = replica("r-1")

    node = await Node(data_dir, plane).start()
    hello = await eventually(lambda: plane.messages("hello"), what="hello")
    (report,) = hello[0].replicas
    assert (report.replica_id, report.state, report.started_at) == ("r-1", "running", before.started_at)
    assert hello[0].inventory.accelerator == "tcg" and hello[0].inventory.cpus >= 1
    assert hello[0].inventory.memory_mib > 0 and hello[0].inventory.simulated is False

    await node.settled(plane)  # desired names it: adopted, never restarted
    assert node.runtime.vmm.calls == [] and (await node.runtime.get("r-1")).pid == before.pid
    assert plane.messages("replica.status") == []
    await node.stop()
    assert (await make_runtime(data_dir).get("r-1")).state == "running"  # left running on exit


async def test_reconnects_after_the_plane_drops_the_connection_and_says_hello_again(plane, data_dir):
    node = await Node(data_dir, plane).start()
    await eventually(lambda: len(plane.messages("hello")) == 1, what="first hello")
    await plane.connections[0].ws.close()
    await eventually(lambda: len(plane.messages("hello")) == 2, what="second hello")
    plane.connections[1].ws.transport.abort()  # an abrupt drop, not a close handshake
    await eventually(lambda: len(plane.messages("hello")) == 3, what="third hello")
    assert node.daemon.client.connections == 3 and all(len(c.received) >= 1 for c in plane.connections)
    await node.stop()


async def test_backoff_is_exponential_with_full_jitter_and_capped():
    cred = Credential("http://127.0.0.1:9", 1, "gnode_x")

    async def nothing(*_):
        return None

    top = AgentClient(cred, hello=nothing, heartbeat=nothing, on_message=nothing, backoff_base_s=0.5,
                      backoff_cap_s=30.0, rng=lambda: 1.0)
    assert [top.backoff(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    jittered = AgentClient(cred, hello=nothing, heartbeat=nothing, on_message=nothing, rng=lambda: 0.25)
    assert jittered.backoff(3) == 1.0 and jittered.url == "ws://127.0.0.1:9/ws/v1/agent/"
    assert await jittered.send(Heartbeat()) is False  # nothing is queued while disconnected


async def test_an_unreachable_plane_is_retried_with_growing_delays(data_dir, caplog):
    caplog.set_level(logging.INFO, logger="nodes.agent.client")
    plane = FakePlane()  # never started: its port 0 is refused
    plane.port = 9
    node = await Node(data_dir, plane, client_options={"backoff_base_s": 0.01, "backoff_cap_s": 0.1,
                                                       "rng": lambda: 1.0}).start()
    await eventually(lambda: caplog.text.count("reconnecting in") >= 5, what="five retries")
    delays = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reconnecting in")]
    assert delays[:5] == ["reconnecting in 0.0s", "reconnecting in 0.0s", "reconnecting in 0.0s",
                          "reconnecting in 0.1s", "reconnecting in 0.1s"]
    assert "cannot reach the control plane at ws://127.0.0.1:9/ws/v1/agent/" in caplog.text
    await node.stop()


async def test_a_refused_credential_is_logged_and_retried_at_the_cap(data_dir, caplog):
    plane = await FakePlane(credential="gnode_the-real-one").start()
    node = await Node(data_dir, plane, credential="gnode_revoked",
                      client_options={"backoff_base_s": 0.01, "backoff_cap_s": 0.3}).start()
    await eventually(lambda: caplog.text.count("refused this node's credential") >= 3, what="three refusals")
    assert plane.connections == [] and node.daemon.client.connections == 0
    assert "refused this node's credential (HTTP 403)" in caplog.text and "gnode_revoked" not in caplog.text
    # At the cap, not the growing backoff: three tries take at least two caps.
    retries = [r.created for r in caplog.records if "refused this node's credential" in r.getMessage()]
    assert retries[2] - retries[0] >= 2 * 0.3 - 0.05
    await node.stop()
    await plane.close()


async def test_heartbeats_follow_the_interval_the_plane_sets(data_dir):
    plane = await FakePlane(heartbeat_interval_s=0.5).start()
    node = await Node(data_dir, plane).start()
    beats = await eventually(lambda: len(plane.messages("heartbeat")) >= 3 and plane.messages("heartbeat"),
                             timeout=5, what="three heartbeats")
    assert all(b.load1 >= 0 and b.free_disk_gib > 0 for b in beats)
    await node.stop()
    await plane.close()


async def test_error_and_bad_frames_from_the_plane_are_logged_and_the_connection_stays(plane, data_dir, caplog):
    node = await Node(data_dir, plane).start()
    await eventually(lambda: plane.messages("hello"), what="hello")
    await plane.send(Error(message="replica r-9 is not placed on this node", refused_type="replica.status"))
    ws = plane.connections[0].ws
    await ws.send("not json")
    await ws.send('{"type": "hello", "version": 1}')
    await ws.send('{"type": "desired", "version": 99, "replicas": []}')
    plane.desired["r-2"] = replica("r-2")
    await plane.send(plane.desired_message())
    await eventually(lambda: "running" in plane.states("r-2"), what="r-2 running")
    assert len(plane.connections) == 1  # never reconnected: nothing above was fatal
    for text in ("not placed on this node", "frame is not JSON", "unknown message type 'hello'",
                 "protocol version '99'"):
        assert text in caplog.text
    await node.stop()
