"""Fixtures that build a node's network inside throwaway namespaces (see tests/agent/netns.py).

- `netns_factory()` -> Netns: a fresh namespace, deleted (with whatever runs in it) at teardown.
- `node_netns`: the namespace standing in for a node's root namespace.
- `node_network`: a LinuxNetwork managing `node_netns`, state under tmp_path.
- `outside_netns`: "the rest of the world", joined to the node by a veth pair:
  node `uplink0` = NODE_UPLINK_IP, outside `eth0` = OUTSIDE_IP.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from nodes.agent.network import LinuxNetwork, NetworkConfig
from tests.agent.netns import Netns, configure, create_netns, link_veth

NODE_UPLINK_IP = "192.0.2.1"
OUTSIDE_IP = "192.0.2.2"


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], Netns]]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    created: list[Netns] = []

    def make() -> Netns:
        ns = create_netns()
        created.append(ns)
        return ns

    yield make
    for ns in reversed(created):
        ns.close()


@pytest.fixture
def node_netns(netns_factory) -> Netns:
    return netns_factory()


@pytest.fixture
def node_network(node_netns, tmp_path) -> LinuxNetwork:
    return LinuxNetwork(NetworkConfig(), tmp_path / "network", netns=node_netns.name)


@pytest.fixture
def outside_netns(netns_factory, node_netns) -> Netns:
    outside = netns_factory()
    link_veth(node_netns, "uplink0", outside, "eth0")
    configure(node_netns, "uplink0", f"{NODE_UPLINK_IP}/24")
    configure(outside, "eth0", f"{OUTSIDE_IP}/24")
    return outside
