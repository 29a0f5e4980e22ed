"""A replica's extra ports (the plane's `expose`, issue 25): each published beside the traffic
port, reported as `host_ports`, closed to all but the gateways like the traffic port, released
with the VM and published again when a restarted agent adopts it.

The runtime half runs against the fakes (guests are host processes on 127.0.0.1 of a namespace
test_runtime's `ns` fixture made, where a published port is the guest port itself); the network half against real kernel objects in
namespaces the tests make, with TEST-NET-1 addresses only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.network import LinuxNetwork, NetworkConfig
from protocol.wire import DesiredReplica, ReplicaSpec
from tests.agent.conftest_netns import (  # noqa: F401  (fixtures)
    NODE_UPLINK_IP,
    netns_factory,
    node_netns,
    outside_netns,
)
from tests.agent.plane import Node, eventually, plane, data_dir  # noqa: F401  (fixtures)
from tests.agent.test_network import _attach_vm
from tests.agent.test_network_gateway_only import GATEWAY_IP, STRANGER_IP, _connect, _guard_rules, _net, outside  # noqa: F401
from tests.agent.test_runtime import make_runtime, ns, parts  # noqa: F401  (fixtures)

# A guest that answers a connection on each of its ports with that port's number, and
# closes it: the fake guest behind each published port.
PORTS_GUEST = """
import select, socket, sys
listening = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen()
    listening.append(s)
while True:
    ready, _, _ = select.select(listening, [], [])
    for s in ready:
        c, _ = s.accept()
        c.sendall(str(s.getsockname()[1]).encode())
        c.close()
"""


# Ports for the fake guests, handed out once each from below Linux's ephemeral range (32768
# up): a connection the namespace makes (the health checks') takes its local port from that
# range, and one it held would keep a guest from binding the same port.
_PORTS = itertools.count(24100)


def free_ports(n: int) -> list[int]:
    """`n` ports no earlier call gave, each free to bind here too (some tests' guests run in the
    test's own namespace)."""
    ports: list[int] = []
    while len(ports) < n:
        port = next(_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def ports_spec(name: str, traffic: int, extra: list[int], *, listening: list[int] | None = None) -> ReplicaSpec:
    """A replica with a traffic port and extra ports, whose guest listens on `listening`
    (default: all of them)."""
    serve = [traffic, *extra] if listening is None else listening
    return ReplicaSpec(name=name, image="sh", traffic_port=traffic, ports=extra,
                       entrypoint=[sys.executable, "-c", PORTS_GUEST, *map(str, serve)])


async def answer(ns, port: int) -> str:
    """What the guest says on `port`, asked from inside the namespace its fake guests run in."""
    return await asyncio.to_thread(ns.fetch, "tcp", "127.0.0.1", port)


def published(network) -> list[tuple]:
    return [call for call in network.calls if call[0] == "publish_port"]


# -- the runtime, against the fakes ---------------------------------------------------------------


async def test_every_port_is_published_and_only_the_traffic_port_is_health_checked(tmp_path, parts, ns):
    _, network, _ = parts
    rt = make_runtime(tmp_path, parts)
    traffic, web, ssh = free_ports(3)
    # Nothing listens on `ssh`: the VM still runs, since only the traffic port gates it.
    info = await rt.start(ports_spec("multi", traffic, [web, ssh], listening=[traffic, web]))

    assert info.state == "running" and info.host_port == traffic
    assert info.host_ports == {str(traffic): traffic, str(web): web, str(ssh): ssh}
    assert published(network) == [("publish_port", "multi", port) for port in (traffic, web, ssh)]
    assert (await answer(ns, traffic), await answer(ns, web)) == (str(traffic), str(web))
    # What `vm ls` prints, and what state.json keeps for the next agent.
    assert (await rt.get("multi")).public()["host_ports"] == info.host_ports
    stored = json.loads((tmp_path / "data" / "vms" / "multi" / "state.json").read_text())
    assert stored["host_ports"] == info.host_ports

    await rt.stop("multi")
    assert network.ports == {} and network.taps == set()  # every port released with the VM
    await rt.remove("multi")
    await rt.close()


async def test_a_replica_without_extra_ports_reports_its_traffic_port_alone(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    (traffic,) = free_ports(1)
    info = await rt.start(ports_spec("single", traffic, []))
    assert (info.host_port, info.host_ports) == (traffic, {str(traffic): traffic})
    batch = await rt.start(ReplicaSpec(name="batch", image="sh", args=["sleep 30"], ports=[]))
    assert (batch.host_port, batch.host_ports) == (None, {})
    await rt.close()


async def test_an_adopted_vm_gets_every_port_published_again(tmp_path, parts, ns):
    _, network, _ = parts
    rt = make_runtime(tmp_path, parts)
    traffic, web, ssh = free_ports(3)
    await rt.start(ports_spec("kept", traffic, [web, ssh]))
    await rt.close()  # the agent stops; the VM runs on
    network.calls.clear()

    rt2 = make_runtime(tmp_path, parts)
    await rt2.recover()
    await rt2.reassert_networks()
    assert published(network) == [("publish_port", "kept", port) for port in (traffic, web, ssh)]
    assert (await rt2.get("kept")).host_ports == {str(p): p for p in (traffic, web, ssh)}
    assert await answer(ns, ssh) == str(ssh)
    await rt2.remove("kept")
    assert network.ports == {}


async def test_a_vm_an_older_agent_started_learns_its_host_ports_on_adoption(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    (traffic,) = free_ports(1)
    await rt.start(ports_spec("older", traffic, []))
    await rt.close()
    state = tmp_path / "data" / "vms" / "older" / "state.json"
    old = json.loads(state.read_text())
    del old["host_ports"]  # state.json as an agent before `expose` wrote it
    state.write_text(json.dumps(old))

    rt2 = make_runtime(tmp_path, parts)
    (adopted,) = await rt2.recover()
    assert adopted.host_ports == {}
    await rt2.reassert_networks()
    assert (await rt2.get("older")).host_ports == {str(traffic): traffic}
    assert json.loads(state.read_text())["host_ports"] == {str(traffic): traffic}
    await rt2.remove("older")


@pytest.mark.parametrize(("extra", "why"), [
    ([8080], "named twice"),  # the traffic port again
    ([9000, 9000], "named twice"),
    ([0], "not 1-65535"),
    ([65536], "not 1-65535"),
    (list(range(9001, 9010)), "at most 8"),
])
async def test_a_spec_with_ports_the_plane_never_sends_is_refused_before_anything_is_made(
    tmp_path, parts, extra, why
):
    _, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    spec = ReplicaSpec(name="odd", image="sh", traffic_port=8080, ports=extra, args=["sleep 30"])
    with pytest.raises(AgentError, match=f"ports refused: .*{why}") as refused:
        await rt.start(spec)
    assert refused.value.permanent
    assert network.calls == [] and vmm.calls == [] and not (tmp_path / "data" / "vms" / "odd").exists()


async def test_the_plane_hears_every_host_port_of_a_running_replica(plane, data_dir):
    traffic, web = free_ports(2)
    plane.desired["r-1"] = DesiredReplica(replica_id="r-1", spec=ports_spec("r-1", traffic, [web]))
    node = await Node(data_dir, plane).start()
    await eventually(lambda: "running" in plane.states("r-1"), what="r-1 running")
    running = [m.report for m in plane.messages("replica.status", replica_id="r-1") if m.report.state == "running"]
    assert (running[-1].host_port, running[-1].host_ports) == (traffic, {str(traffic): traffic, str(web): web})
    await node.stop()

    # A reconnecting agent's hello carries them too.
    again = await Node(data_dir, plane).start()
    await eventually(lambda: len(plane.messages("hello")) == 2, what="the second hello")
    (report,) = plane.messages("hello")[-1].replicas
    assert report.host_ports == {str(traffic): traffic, str(web): web}
    await again.stop()


# -- the network, in namespaces -------------------------------------------------------------------


async def _two_port_vm(node_netns, netns_factory, network: LinuxNetwork, tmp_path) -> dict[int, int]:
    """A "VM" serving /marker on guest ports 8080 and 9000 (each saying which), both published:
    guest port -> host port."""
    await network.ensure_host()
    net = await network.ensure_tap("web")
    ports = {guest: await network.publish_port("web", guest) for guest in (8080, 9000)}
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    for guest in ports:
        site = tmp_path / f"site-{guest}"
        site.mkdir()
        (site / "marker").write_text(f"port {guest}")
        await asyncio.to_thread(vm.serve_http, guest, site)
    return ports


@pytest.mark.netns
async def test_two_published_ports_answer_the_gateway_only_and_close_with_the_vm(
    node_netns, outside, netns_factory, tmp_path
):
    network = LinuxNetwork(NetworkConfig(published_from=_net((GATEWAY_IP,))), tmp_path / "network",
                           netns=node_netns.name)
    ports = await _two_port_vm(node_netns, netns_factory, network, tmp_path)
    assert len(set(ports.values())) == 2

    for guest, host in ports.items():
        assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host))[0] == f"port {guest}"
        refused, took = await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host)
        assert (refused, took < 4) == ("refused", True), guest  # a reset, not a timeout
    assert sum("reject" in rule for rule in _guard_rules(node_netns)) == 2  # one guard per port

    await network.remove("web")  # as a stop does
    for host in ports.values():
        assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host))[0] == "refused"
    ruleset = node_netns.run("nft", "list", "ruleset")
    assert "gantry:vm:web" not in ruleset and not any(str(host) in ruleset for host in ports.values())


@pytest.mark.netns
async def test_a_restarted_agent_publishes_both_ports_again_on_the_same_host_ports(
    node_netns, outside, netns_factory, tmp_path
):
    config = NetworkConfig(published_from=_net((GATEWAY_IP,)))
    first = LinuxNetwork(config, tmp_path / "network", netns=node_netns.name)
    ports = await _two_port_vm(node_netns, netns_factory, first, tmp_path)
    guarded = _guard_rules(node_netns)

    node_netns.run("nft", "delete", "table", "ip", "gantry")  # someone flushed the node's rules
    for host in ports.values():
        assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host))[0] == "refused"

    # The new agent's adoption re-checks the VM's network (runtime_recover.reassert_networks).
    restarted = LinuxNetwork(config, tmp_path / "network", netns=node_netns.name)
    await restarted.ensure_host()
    await restarted.ensure_tap("web")
    assert {guest: await restarted.publish_port("web", guest) for guest in ports} == ports  # the leases keep them
    assert _guard_rules(node_netns) == guarded
    for guest, host in ports.items():
        assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host))[0] == f"port {guest}"
        assert (await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host))[0] == "refused"


def test_vm_run_publishes_extra_ports_with_publish():
    from nodes.agent.cli import _spec, build_parser

    args = build_parser().parse_args(["vm", "run", "x", "--image", "i", "--port", "8080",
                                      "--publish", "22", "--publish", "9000"])
    assert (_spec(args).traffic_port, _spec(args).ports) == (8080, [22, 9000])
    assert _spec(build_parser().parse_args(["vm", "run", "x", "--image", "i"])).ports == []
