"""LinuxNetwork against real kernel objects, inside namespaces the tests create and delete.

A "vm" namespace stands in for a guest: its veth is enslaved to the bridge next to the VM's
TAP, carries the leased address and runs a small server on the guest port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.health import wait_healthy
from nodes.agent.net.dns import host_nameservers
from nodes.agent.network import LinuxNetwork, NetworkConfig, VmNetwork, tap_name
from tests.agent.conftest_netns import (  # noqa: F401  (fixtures)
    NODE_UPLINK_IP,
    OUTSIDE_IP,
    netns_factory,
    node_netns,
    node_network,
    outside_netns,
)
from tests.agent.netns import Netns, configure, ip, link_veth

pytestmark = pytest.mark.netns


def _snapshot(ns: Netns) -> tuple[object, ...]:
    def untimed(value: object) -> object:
        # Bridge timers (gc_timer, hello_timer...) tick on their own; everything else is state.
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if not k.endswith("_timer")}
        if isinstance(value, list):
            return [untimed(v) for v in value]
        return value

    return (
        json.loads(ns.run("nft", "-j", "list", "ruleset")),
        untimed(json.loads(ns.run("ip", "-d", "-j", "link"))),
        json.loads(ns.run("ip", "-j", "addr")),
    )


def _rules(ns: Netns) -> list[dict]:
    items = json.loads(ns.run("nft", "-j", "list", "ruleset"))["nftables"]
    return [item["rule"] for item in items if "rule" in item]


def _link(ns: Netns, ifname: str) -> dict | None:
    result = ip("-n", ns.name, "-d", "-j", "link", "show", ifname, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def _attach_vm(node: Netns, vm: Netns, net: VmNetwork) -> None:
    """Put `vm` on the bridge with the VM's address, as its TAP would carry a guest."""
    link_veth(node, "gv0", vm, "eth0")
    configure(node, "gv0", "", master="gantry0")
    ip("-n", node.name, "link", "set", "gv0", "type", "bridge_slave", "hairpin", "on")  # as on the TAP
    ip("-n", vm.name, "link", "set", "eth0", "address", net.mac)
    configure(vm, "eth0", f"{net.address}/{net.prefixlen}", gateway=str(net.gateway))


async def _serve_marker(vm: Netns, tmp_path, text: str) -> None:
    """An HTTP server on port 8080 in the VM's namespace whose /marker says `text`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "marker").write_text(text)
    await asyncio.to_thread(vm.serve_http, 8080, site)


async def test_ensure_host_builds_bridge_forwarding_and_nat(node_netns, node_network):
    await node_network.ensure_host()

    bridge = _link(node_netns, "gantry0")
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in bridge["flags"]
    addrs = json.loads(node_netns.run("ip", "-j", "addr", "show", "gantry0"))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [("172.31.240.1", 24)]
    assert node_netns.run("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert node_netns.run("cat", "/proc/sys/net/ipv4/conf/gantry0/route_localnet").strip() == "1"
    assert node_netns.run("cat", "/proc/sys/net/ipv4/conf/gantry0/send_redirects").strip() == "0"
    assert node_netns.run("cat", "/proc/sys/net/ipv6/conf/gantry0/disable_ipv6").strip() == "1"
    assert not [a for a in addrs if a["family"] == "inet6"]
    listing = node_netns.run("nft", "list", "table", "ip", "gantry")
    assert 'ip saddr 172.31.240.0/24 oifname != "gantry0" masquerade' in listing


async def test_second_pass_changes_nothing(node_netns, node_network, tmp_path):
    await node_network.ensure_host()
    first_tap = await node_network.ensure_tap("web")
    first_port = await node_network.publish_port("web", 8080)
    before = await asyncio.to_thread(_snapshot, node_netns)
    leases_before = (tmp_path / "network" / "network.json").read_text()

    await node_network.ensure_host()
    assert await node_network.ensure_tap("web") == first_tap
    assert await node_network.publish_port("web", 8080) == first_port
    after = await asyncio.to_thread(_snapshot, node_netns)

    assert after == before
    assert (tmp_path / "network" / "network.json").read_text() == leases_before
    web = [r for r in _rules(node_netns) if r.get("comment", "").startswith("gantry:vm:web:")]
    assert len([r for r in web if r["family"] == "ip"]) == 2  # DNAT from outside and from the node
    assert len([r for r in web if r["family"] == "bridge"]) == 6  # isolation and anti-spoofing of its TAP


async def test_removed_rules_and_port_flags_come_back(node_netns, node_network):
    """Rules are owned and re-checked: whatever someone deleted, the next pass restores, in
    the order the filter needs (a re-added accept after its chain's drop would be dead)."""
    await node_network.ensure_host()
    net = await node_network.ensure_tap("web")
    await node_network.publish_port("web", 8080)
    before = await asyncio.to_thread(_snapshot, node_netns)

    node_netns.run("nft", "flush", "chain", "bridge", "gantry", "prerouting")
    ip("-n", node_netns.name, "link", "set", net.tap, "type", "bridge_slave", "hairpin", "off")
    # The accept of replies into VMs, deleted: appended again it would come after the drop.
    forward = node_netns.run("nft", "-a", "list", "chain", "ip", "gantry", "forward").splitlines()
    [established] = [line.rsplit("# handle ", 1)[1] for line in forward
                     if 'oifname "gantry0" ct state established,related accept' in line]
    node_netns.run("nft", "delete", "rule", "ip", "gantry", "forward", "handle", established)
    await node_network.ensure_host()
    await node_network.ensure_tap("web")

    def without_handles(snapshot):
        # Re-added rules get new handles; what they say, and in which order, is what matters.
        ruleset = [{k: v for k, v in item["rule"].items() if k != "handle"}
                   for item in snapshot[0]["nftables"] if "rule" in item]
        return [json.dumps(r, sort_keys=True) for r in ruleset], snapshot[1]
    assert without_handles(await asyncio.to_thread(_snapshot, node_netns)) == without_handles(before)


async def test_tap_is_a_persistent_bridge_port_and_is_adopted(node_netns, node_network, tmp_path):
    net = await node_network.ensure_tap("web")

    assert net.tap == tap_name("web") and len(net.tap) <= 15
    tap = _link(node_netns, net.tap)
    assert tap["linkinfo"]["info_kind"] == "tun"
    assert tap["linkinfo"]["info_data"]["type"] == "tap"
    assert tap["linkinfo"]["info_data"]["persist"] is True
    assert tap["master"] == "gantry0"
    assert tap["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert "UP" in tap["flags"]
    assert ipaddress.IPv4Address(net.address) in ipaddress.IPv4Network("172.31.240.0/24")
    assert net.address != net.gateway and net.prefixlen == 24

    # A restarted agent (new instance, same state) adopts the TAP instead of recreating it.
    restarted = LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)
    assert await restarted.ensure_tap("web") == net
    assert _link(node_netns, net.tap)["ifindex"] == tap["ifindex"]

    # Nameservers: the host's own unless configured (this fixture configures none).
    assert net.nameservers == await asyncio.to_thread(host_nameservers)
    configured = LinuxNetwork(NetworkConfig(nameservers=("192.0.2.53",)), tmp_path / "network", netns=node_netns.name)
    assert (await configured.ensure_tap("web")).nameservers == ("192.0.2.53",)


async def test_leases_survive_a_new_instance(node_netns, node_network, tmp_path):
    a = await node_network.ensure_tap("a")
    b = await node_network.ensure_tap("b")
    pa = await node_network.publish_port("a", 8080)
    pb = await node_network.publish_port("b", 8080)
    assert a.address != b.address and pa != pb
    assert {pa, pb} <= set(range(30000, 32768))

    restarted = LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)
    assert await restarted.publish_port("b", 8080) == pb
    assert await restarted.ensure_tap("a") == a
    assert await restarted.ensure_tap("b") == b


async def test_vms_started_at_once_get_distinct_leases(node_netns, node_network):
    names = [f"vm{i}" for i in range(10)]
    nets = await asyncio.gather(*(node_network.ensure_tap(name) for name in names))
    ports = await asyncio.gather(*(node_network.publish_port(name, 8080) for name in names))

    assert len({net.address for net in nets}) == len({net.tap for net in nets}) == len(set(ports)) == 10
    host_rules = [r["comment"] for r in _rules(node_netns) if r.get("comment", "").startswith("gantry:host:")]
    assert host_rules and len(host_rules) == len(set(host_rules))  # ensure_host ran ten times, added its rules once


async def test_two_agents_on_one_state_dir_never_share_a_port(node_netns, tmp_path):
    """The operator CLI and the agent are separate processes with separate in-process locks;
    the lease file's flock is what keeps them from handing out the same lowest free port."""
    first = LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)
    second = LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)

    ports = await asyncio.gather(
        *(net.publish_port(f"{label}{i}", 80) for i in range(4) for label, net in (("a", first), ("b", second)))
    )

    assert sorted(ports) == list(range(30000, 30008))


async def test_host_port_taken_by_another_vm_is_refused(node_network):
    assert await node_network.publish_port("a", 80, host_port=31000) == 31000
    with pytest.raises(AgentError) as err:
        await node_network.publish_port("b", 80, host_port=31000)
    assert err.value.permanent
    assert "31000" in err.value.message and "a" in err.value.message


async def test_a_port_another_program_listens_on_is_never_published(node_netns, node_network, tmp_path):
    """DNAT would steal that program's traffic: a new lease skips the port, and asking for it
    by number is refused with the reason."""
    low = NetworkConfig().host_port_range[0]
    await asyncio.to_thread(node_netns.serve_http, low, tmp_path)
    assert await node_network.publish_port("a", 80) == low + 1
    with pytest.raises(AgentError) as err:
        await node_network.publish_port("b", 80, host_port=low)
    assert err.value.permanent and f"host port {low} is in use by another program" in err.value.message


async def test_invalid_name_is_refused(node_network):
    with pytest.raises(AgentError) as err:
        await node_network.ensure_tap('bad"name')
    assert err.value.permanent


async def test_published_port_answers_from_node_and_outside(
    node_netns, outside_netns, netns_factory, node_network, tmp_path
):
    await node_network.ensure_host()
    net = await node_network.ensure_tap("web")
    host_port = await node_network.publish_port("web", 8080)
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    await _serve_marker(vm, tmp_path, "hello from the vm")

    await wait_healthy("127.0.0.1", host_port, timeout=30, http_path="/marker", netns=node_netns.name)
    from_node = await asyncio.to_thread(node_netns.fetch, "http", "127.0.0.1", host_port, "marker")
    from_outside = await asyncio.to_thread(outside_netns.fetch, "http", NODE_UPLINK_IP, host_port, "marker")
    # Hairpin: the VM calling its own published port through the node's address.
    from_vm = await asyncio.to_thread(vm.fetch, "http", NODE_UPLINK_IP, host_port, "marker")

    assert from_node == from_outside == from_vm == "hello from the vm"


async def test_vm_egress_is_masqueraded_as_the_node(node_netns, outside_netns, netns_factory, node_network):
    await node_network.ensure_host()
    net = await node_network.ensure_tap("web")
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    await asyncio.to_thread(outside_netns.serve_whoami, 9000)

    # The outside namespace has no route back to the VM subnet: only NAT can make this work.
    seen = await asyncio.to_thread(vm.fetch, "tcp", OUTSIDE_IP, 9000)

    assert seen.strip() == NODE_UPLINK_IP


async def test_vm_cannot_reach_node_loopback(node_netns, netns_factory, node_network):
    """route_localnet on the bridge would let a guest reach the node's 127/8 services (the hole
    of kubernetes CVE-2020-8558). Two rules stop it, each on its own: the guard chain (127/8
    from the bridge) and the input chain (nothing a VM opens to the node). The test proves its
    probe gets through with neither, and is stopped by either alone."""
    await node_network.ensure_host()
    net = await node_network.ensure_tap("web")
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    await asyncio.to_thread(node_netns.serve_whoami, 9100)
    # Teach the "guest" to send 127.0.0.2 to its gateway, as a malicious guest could.
    ip("-n", vm.name, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
    ip("-n", vm.name, "route", "add", "127.0.0.2/32", "via", str(net.gateway))
    vm.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet")

    async def probe() -> bool:
        return (await asyncio.to_thread(vm.fetch, "tcp", "127.0.0.2", 9100, check=False)).strip() == str(net.address)

    for flushed in (("guard", "input"), ("guard",), ("input",)):
        for chain in flushed:
            node_netns.run("nft", "flush", "chain", "ip", "gantry", chain)
        assert await probe() == (len(flushed) == 2), flushed
        await node_network.ensure_host()  # puts the rules back, as any later pass would
    assert not await probe()


async def test_remove_leaves_no_tap_rule_or_lease(node_netns, node_network, tmp_path):
    await node_network.ensure_host()
    net = await node_network.ensure_tap("web")
    await node_network.publish_port("web", 8080)
    await node_network.ensure_tap("other")

    await node_network.remove("web")
    await node_network.remove("web")  # idempotent

    assert _link(node_netns, net.tap) is None
    comments = [r.get("comment", "") for r in _rules(node_netns)]
    assert not [c for c in comments if c.startswith("gantry:vm:web:")]
    assert any(c.startswith("gantry:host:") for c in comments)
    leases = json.loads((tmp_path / "network" / "network.json").read_text())
    assert set(leases["vms"]) == {"other"}
    assert await node_network.owned() == {"other"}


async def test_owned_reports_a_crashed_vms_leftovers(node_netns, node_network, tmp_path):
    net = await node_network.ensure_tap("crashed")
    await node_network.publish_port("crashed", 8080)

    # Even with the lease file gone, the TAP's alias and the rules' comments name the VM.
    amnesiac = LinuxNetwork(NetworkConfig(), tmp_path / "fresh", netns=node_netns.name)
    assert await amnesiac.owned() == {"crashed"}
    await amnesiac.remove("crashed")
    assert _link(node_netns, net.tap) is None
    assert not [r for r in _rules(node_netns) if r.get("comment", "").startswith("gantry:vm:")]
    # The original instance still holds the lease: it reports that until it removes it.
    assert await node_network.owned() == {"crashed"}
    await node_network.remove("crashed")
    assert await node_network.owned() == set()


async def test_publish_address_and_uplink_narrow_the_rules(node_netns, outside_netns, netns_factory, tmp_path):
    """publish_address limits DNAT from outside to that one address (plus loopback on the node);
    uplink limits egress masquerade to that link."""
    ip("-n", node_netns.name, "addr", "add", "192.0.2.3/24", "dev", "uplink0")
    config = NetworkConfig(publish_address=NODE_UPLINK_IP, uplink="uplink0")
    network = LinuxNetwork(config, tmp_path / "network", netns=node_netns.name)
    net = await network.ensure_tap("web")
    host_port = await network.publish_port("web", 8080)
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    await _serve_marker(vm, tmp_path, "narrow")
    await asyncio.to_thread(outside_netns.serve_whoami, 9000)

    assert await asyncio.to_thread(outside_netns.fetch, "http", NODE_UPLINK_IP, host_port, "marker") == "narrow"
    assert await asyncio.to_thread(node_netns.fetch, "http", "127.0.0.1", host_port, "marker") == "narrow"
    other = await asyncio.to_thread(outside_netns.fetch, "http", "192.0.2.3", host_port, "marker", check=False)
    assert other != "narrow"
    seen = await asyncio.to_thread(vm.fetch, "tcp", OUTSIDE_IP, 9000)
    assert seen.strip() in {NODE_UPLINK_IP, "192.0.2.3"}  # masqueraded by uplink0, either address
