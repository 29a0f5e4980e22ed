"""Published ports closed to all but the endpoint gateways (`--gateway-address`), against real
kernel objects inside namespaces the tests create: the node, "the outside" (one link, two
addresses: the gateway's and someone else's) and a "VM" on the bridge, as test_network.py
builds them. Every address is TEST-NET-1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time

import pytest

from nodes.agent.cli import build_parser, main
from nodes.agent.network import LinuxNetwork, NetworkConfig
from nodes.agent.net.rules import dnat_rules
from tests.agent.conftest_netns import (  # noqa: F401  (fixtures)
    NODE_UPLINK_IP,
    OUTSIDE_IP,
    netns_factory,
    node_netns,
    outside_netns,
)
from tests.agent.netns import Netns, ip
from tests.agent.test_network import _attach_vm, _serve_marker

GATEWAY_IP = OUTSIDE_IP  # the endpoint gateway's address, on the outside
STRANGER_IP = "192.0.2.4"  # anyone else, on the same link
BRNF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"

# A client that opens its connection from a chosen source address and prints the published
# port's /marker, or how the connection failed.
CONNECT_FROM = """
import socket, sys
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=5, source_address=(src, 0)) as c:
        c.sendall(b"GET /marker HTTP/1.0\\r\\n\\r\\n")
        print(c.makefile("rb").read().split(b"\\r\\n\\r\\n", 1)[1].decode(), end="")
except ConnectionRefusedError:
    print("refused", end="")
except OSError as exc:
    print(type(exc).__name__, end="")
"""


def _net(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in networks)


async def _connect(ns: Netns, source: str, host: str, port: int) -> tuple[str, float]:
    """What a connection from `source` gets, and how long it took to get it."""
    began = time.monotonic()
    out = await asyncio.to_thread(ns.run, sys.executable, "-c", CONNECT_FROM, source, host, str(port))
    return out, time.monotonic() - began


async def _published_vm(node_netns: Netns, netns_factory, network: LinuxNetwork, tmp_path) -> tuple[Netns, str, int]:
    """A "VM" serving /marker on guest port 8080, published: its namespace, address and host port."""
    await network.ensure_host()
    net = await network.ensure_tap("web")
    host_port = await network.publish_port("web", 8080)
    vm = netns_factory()
    _attach_vm(node_netns, vm, net)
    await _serve_marker(vm, tmp_path, "hello from the vm")
    return vm, str(net.address), host_port


@pytest.fixture
def outside(outside_netns) -> Netns:
    ip("-n", outside_netns.name, "addr", "add", f"{STRANGER_IP}/24", "dev", "eth0")
    return outside_netns


def _guard_rules(ns: Netns) -> list[str]:
    items = json.loads(ns.run("nft", "-j", "list", "chain", "ip", "gantry", "guard"))["nftables"]
    return sorted(json.dumps(item["rule"]["expr"], sort_keys=True) for item in items if "rule" in item)


def test_each_published_port_is_refused_before_dnat_to_all_but_the_ipv4_sources():
    def rules(*sources: str, publish_address: str = "0.0.0.0") -> list[tuple[str, str]]:
        made = dnat_rules(address=ipaddress.IPv4Address("172.31.240.2"), ports={8080: 30001, 9000: 30002},
                          publish_address=publish_address, published_from=_net(sources))
        return [(rule.chain, rule.body) for rule in made]

    opened = rules()
    assert not [body for _, body in opened if "reject" in body]
    closed = rules("192.0.2.2", "192.0.2.0/30", "2001:db8::/32")
    assert [rule for rule in closed if rule[0] != "guard"] == opened  # the DNAT itself is unchanged
    assert [rule for rule in closed if rule[0] == "guard"] == [
        ("guard", f"fib daddr type local tcp dport {port} tcp flags & (fin | syn | rst | ack) == syn "
                  "ip saddr != { 192.0.2.0/30 } reject with tcp reset") for port in (30001, 30002)]
    # IPv6 gateways only: no IPv4 source may open a published port.
    assert rules("2001:db8::1", publish_address="192.0.2.1")[0] == (
        "guard", "ip daddr 192.0.2.1 tcp dport 30001 tcp flags & (fin | syn | rst | ack) == syn reject with tcp reset")


def test_gateway_addresses_are_an_agent_option_and_a_widening_typo_is_refused(capsys):
    args = build_parser().parse_args(["run", "--gateway-address", "192.0.2.2", "--gateway-address", "2001:db8::/32",
                                      "--health-interval", "0.5", "--health-failures", "2"])
    assert args.gateway_address == list(_net(("192.0.2.2/32", "2001:db8::/32")))
    assert (args.health_interval, args.health_failures) == (0.5, 2)
    defaults = build_parser().parse_args(["run"])
    assert (defaults.gateway_address, defaults.health_interval, defaults.health_failures) == (None, 5.0, 3)
    for bad in (["--gateway-address", "10.0.0.5/8"], ["--gateway-address", "gateway.example"],
                ["--health-interval", "0"], ["--health-failures", "0"]):
        assert main(["run", *bad]) == 2
        assert "error" in json.loads(capsys.readouterr().out.strip())


@pytest.mark.netns
async def test_only_the_gateway_opens_a_published_port_and_others_are_reset(
    node_netns, outside, netns_factory, tmp_path
):
    network = LinuxNetwork(NetworkConfig(published_from=_net((GATEWAY_IP,))), tmp_path / "network",
                           netns=node_netns.name)
    vm, vm_ip, host_port = await _published_vm(node_netns, netns_factory, network, tmp_path)

    assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host_port))[0] == "hello from the vm"
    refused, took = await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host_port)
    assert refused == "refused" and took < 4  # a reset, not a timeout
    # A VM calling the published port through the node's address is no gateway either, and is
    # reset too, whether the node routes its call or br_netfilter bridges it (a Docker host).
    for br_netfilter in (0, 1):
        node_netns.run("sh", "-c", f"echo {br_netfilter} > {BRNF_SYSCTL}")
        refused, took = await _connect(vm, vm_ip, NODE_UPLINK_IP, host_port)
        assert (refused, took < 4) == ("refused", True), br_netfilter
    # The node's own clients are not filtered (they reach the VM's address directly anyway).
    assert await asyncio.to_thread(node_netns.fetch, "http", "127.0.0.1", host_port, "marker") == "hello from the vm"


@pytest.mark.netns
async def test_a_prefix_admits_its_addresses_and_ipv6_entries_change_nothing(
    node_netns, outside, netns_factory, tmp_path
):
    config = NetworkConfig(published_from=_net(("192.0.2.0/30", "2001:db8::1")))
    network = LinuxNetwork(config, tmp_path / "network", netns=node_netns.name)
    _vm, _vm_ip, host_port = await _published_vm(node_netns, netns_factory, network, tmp_path)

    assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host_port))[0] == "hello from the vm"  # .2 in /30
    assert (await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host_port))[0] == "refused"  # .4 is not


@pytest.mark.netns
async def test_without_gateway_addresses_published_ports_stay_open_to_everyone(
    node_netns, outside, netns_factory, tmp_path
):
    closed = LinuxNetwork(NetworkConfig(published_from=_net((GATEWAY_IP,))), tmp_path / "network",
                          netns=node_netns.name)
    _vm, _vm_ip, host_port = await _published_vm(node_netns, netns_factory, closed, tmp_path)
    assert (await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host_port))[0] == "refused"

    # The agent restarted without --gateway-address: its re-check of the VM opens the port again.
    opened = LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)
    assert await opened.publish_port("web", 8080) == host_port
    assert not any("reject" in rule for rule in _guard_rules(node_netns))
    for source in (GATEWAY_IP, STRANGER_IP):
        assert (await _connect(outside, source, NODE_UPLINK_IP, host_port))[0] == "hello from the vm", source


@pytest.mark.netns
async def test_a_flushed_refusal_comes_back_on_the_next_pass(node_netns, outside, netns_factory, tmp_path):
    network = LinuxNetwork(NetworkConfig(published_from=_net((GATEWAY_IP,))), tmp_path / "network",
                           netns=node_netns.name)
    _vm, _vm_ip, host_port = await _published_vm(node_netns, netns_factory, network, tmp_path)
    before = _guard_rules(node_netns)
    assert any("reject" in rule for rule in before)

    node_netns.run("nft", "flush", "chain", "ip", "gantry", "guard")
    assert (await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host_port))[0] == "hello from the vm"
    await network.publish_port("web", 8080)  # as a VM start, or the daemon's re-check of an adopted VM, does

    assert _guard_rules(node_netns) == before  # in any order: the chain drops and refuses, it accepts nothing
    assert (await _connect(outside, STRANGER_IP, NODE_UPLINK_IP, host_port))[0] == "refused"
    assert (await _connect(outside, GATEWAY_IP, NODE_UPLINK_IP, host_port))[0] == "hello from the vm"
