"""Host networking for microVMs: one bridge per host, one TAP per VM, NAT and published ports.

Layout on a node (defaults):

    VM eth0 172.31.240.x ── TAP gt<hash> ── bridge gantry0 172.31.240.1 ── host routing ── uplink

Each VM is an island (DESIGN 7, `net/rules.py`): nothing its TAP sends is forwarded to
another bridge port, so VMs never see each other's frames; anti-spoofing rules per TAP hold it
to its own MAC and address; and the node's filter lets it reach the internet (NAT) and be
reached on its published ports (by the gateways only, when the node is given their addresses),
nothing else. Links and addresses go through netlink (pyroute2), packet filtering and
rewriting through two nftables tables of ours (`ip gantry`, `bridge gantry`, see `net/nft.py`).
Addresses and host ports are leased in `<state_dir>/network.json`, so an agent restart
re-derives exactly what it had. Every method measures before it acts: calling it again on a
converged host changes nothing, and calling it on a host whose rules or port flags someone
removed puts them back.

The agent manages the namespace it runs in (the host's root namespace). `netns=` points the
same code at a named namespace instead (`--netns`): only the VMs' network moves there, while
the agent itself (its control-plane connection, image pulls, kit downloads) stays where it
runs. The tests use it to build a node's VM network inside a throwaway namespace of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netns import create_socket

from nodes.agent.errors import AgentError
from nodes.agent.net.dns import host_nameservers
from nodes.agent.net.host import NetnsHost
from nodes.agent.net.leases import LeaseFile, Leases, VmLease
from nodes.agent.net.nft import BRIDGE_CHAINS, HOST_OWNER, VM_OWNER_PREFIX, NftTable, vm_owner
from nodes.agent.net.rules import blocked_set, dnat_rules, host_rules, port_rules
from nodes.agent.net.tap import create_tap
from protocol.vocabulary import VM_NAME_RULE, is_vm_name

__all__ = ["LinuxNetwork", "Network", "NetworkConfig", "VmNetwork", "tap_name", "vm_mac"]


def _forget_signal_wakeup_fd() -> None:
    # pyroute2 opens a namespace's socket from a forked child (create_socket) and ends that
    # child with SIGTERM. The child inherits asyncio's signal wakeup fd, so the SIGTERM it gets
    # is written to the parent's loop, which takes it for its own: a daemon with a SIGTERM
    # handler stopped right after start. The child must never report signals to our loop.
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass


os.register_at_fork(after_in_child=_forget_signal_wakeup_fd)

IFF_UP = 0x1
_ALIAS_PREFIX = VM_OWNER_PREFIX  # "gantry:vm:<name>" on each TAP, read back by owned()


@dataclass(frozen=True)
class NetworkConfig:
    bridge: str = "gantry0"
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("172.31.240.0/24"))
    host_port_range: tuple[int, int] = (30000, 32767)
    publish_address: str = "0.0.0.0"  # 0.0.0.0: every local address of the node
    uplink: str | None = None  # None: masquerade whatever leaves by any link but the bridge
    nameservers: tuple[str, ...] | None = None  # None: the host's own (net/dns.py)
    # Networks VMs may not open connections to, beyond the special-purpose ranges that are
    # always blocked (net/rules.py: DEFAULT_BLOCKED): the control plane's, other nodes'.
    blocked_networks: tuple[ipaddress.IPv4Network, ...] = ()
    # The only sources that may open connections to published ports (the gateways, which
    # check a request's key before it reaches a VM); others get a TCP reset. Empty: anyone.
    published_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class VmNetwork:
    tap: str
    mac: str
    address: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    prefixlen: int
    nameservers: tuple[str, ...] = ()


@runtime_checkable
class Network(Protocol):
    async def ensure_host(self) -> None: ...

    async def ensure_tap(self, name: str) -> VmNetwork: ...

    async def publish_port(self, name: str, guest_port: int, host_port: int | None = None) -> int: ...

    async def remove(self, name: str) -> None: ...

    async def owned(self) -> set[str]: ...


def tap_name(name: str) -> str:
    # Linux caps interface names at 15 bytes; 10 hex chars of a hash keep collisions
    # negligible for the few hundred VMs a host runs.
    return "gt" + hashlib.sha256(name.encode()).hexdigest()[:10]


def vm_mac(name: str) -> str:
    # 02: a locally administered unicast address, stable per name so a restarted VM keeps
    # the MAC its neighbours have cached for its (equally stable) leased address.
    digest = hashlib.sha256(b"mac:" + name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _check_name(name: str) -> None:
    # The name ends up in interface aliases and nft comments: protocol/vocabulary.py says why its
    # rule is safe there.
    if not is_vm_name(name):
        raise AgentError(f"invalid VM name {name!r} for networking: use {VM_NAME_RULE}", permanent=True)


class LinuxNetwork:
    def __init__(self, config: NetworkConfig, state_dir: Path, *, netns: str | None = None):
        if len(config.bridge.encode()) > 15:
            raise AgentError(f"bridge name {config.bridge!r} is longer than 15 bytes", permanent=True)
        if config.subnet.prefixlen > 29:
            raise AgentError(f"subnet {config.subnet} is too small for VMs", permanent=True)
        self.config = config
        self.netns = netns
        self._host = NetnsHost(netns)
        self._nft = NftTable(self._host)
        self._bridge_nft = NftTable(self._host, family="bridge", chains=BRIDGE_CHAINS)
        self._leases = LeaseFile(Path(state_dir) / "network.json")

    # -- the Network protocol ---------------------------------------------------------------

    async def ensure_host(self) -> None:
        async with self._leases.locked():
            await self._ensure_host()

    async def ensure_tap(self, name: str) -> VmNetwork:
        """The VM's TAP on the bridge, with its isolation and anti-spoofing rules in place
        before it returns, so the VM's first frame already meets them."""
        _check_name(name)
        async with self._leases.locked():
            await self._ensure_host()
            lease = await self._lease_address(name)
            tap = tap_name(name)
            mac = vm_mac(name)
            await self._bridge_nft.sync(vm_owner(name), port_rules(tap=tap, mac=mac, address=lease.address))
            async with self._ipr() as ipr:
                bridge = await self._link_index(ipr, self.config.bridge)
                index = await self._link_index(ipr, tap)
                if index is None:
                    await create_tap(tap, self.netns)
                    index = await self._link_index(ipr, tap)
                link = await self._link(ipr, index)
                if link.get(("linkinfo", "kind")) != "tun":
                    raise AgentError(f"{tap} exists and is not a TAP device; remove it", permanent=True)
                alias = f"{_ALIAS_PREFIX}{name}"
                if (
                    link.get("master") != bridge
                    or not link["flags"] & IFF_UP
                    or link.get("ifalias") != alias
                ):
                    await ipr.link("set", index=index, master=bridge, state="up", ifalias=alias)
                    link = await self._link(ipr, index)
                if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_MODE") != 1:
                    # Hairpin: where br_netfilter is loaded (any host with Docker), a VM's
                    # packet to its own published port is DNATed at bridge level and sent
                    # back out the port it came in by, which a bridge refuses unless hairpin
                    # mode is on for that port. (Not `isolated`: see net/rules.py.)
                    await ipr.brport("set", index=index, mode=1)
        return VmNetwork(tap, mac, lease.address, self.config.gateway, self.config.subnet.prefixlen,
                         await self._nameservers())

    async def publish_port(self, name: str, guest_port: int, host_port: int | None = None) -> int:
        _check_name(name)
        for port in (guest_port, host_port):
            if port is not None and not 0 < port < 65536:
                raise AgentError(f"invalid port {port}", permanent=True)
        async with self._leases.locked():
            await self._ensure_host()
            leases = await self._leases.read()
            before = leases.to_json()
            lease = leases.lease_address(name, self.config.subnet, {self.config.gateway})
            # Asking the node what listens costs a process: only when a port is to be chosen.
            held = lease.ports.get(guest_port)
            settled = held is not None and host_port in (None, held)
            listening = frozenset() if settled else await self._listening_ports()
            published = leases.lease_port(name, guest_port, host_port, self.config.host_port_range, listening)
            if leases.to_json() != before:
                await self._leases.write(leases)
            await self._nft.sync(vm_owner(name), dnat_rules(address=lease.address, ports=lease.ports,
                                                            publish_address=self.config.publish_address,
                                                            published_from=self.config.published_from))
        return published

    async def remove(self, name: str) -> None:
        # Rules, then the TAP, then the lease: a crash half-way leaves the lease behind, so
        # owned() still names the VM and the next cleanup finishes the job.
        async with self._leases.locked():
            await self._nft.sync(vm_owner(name), [])
            await self._bridge_nft.sync(vm_owner(name), [])
            async with self._ipr() as ipr:
                index = await self._link_index(ipr, tap_name(name))
                if index is not None:
                    await ipr.link("del", index=index)
            leases = await self._leases.read()
            if leases.vms.pop(name, None) is not None:
                await self._leases.write(leases)

    async def owned(self) -> set[str]:
        names = set((await self._leases.read()).vms)
        for table in (self._nft, self._bridge_nft):
            names |= {owner.removeprefix(VM_OWNER_PREFIX) for owner in await table.owners() if owner != HOST_OWNER}
        async with self._ipr() as ipr:
            async for link in await ipr.get_links():
                alias = link.get("ifalias") or ""
                if alias.startswith(_ALIAS_PREFIX):
                    names.add(alias.removeprefix(_ALIAS_PREFIX))
        return names

    # -- steps ------------------------------------------------------------------------------

    async def _listening_ports(self) -> frozenset[int]:
        """TCP ports something on the node listens on (`ss`, in the managed namespace)."""
        result = await self._host.run("ss", "-Hltn")
        ports = set()
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rpartition(":")[2].isdigit():
                ports.add(int(fields[3].rpartition(":")[2]))
        return frozenset(ports)

    async def _ensure_host(self) -> None:
        cfg = self.config
        async with self._ipr() as ipr:
            index = await self._link_index(ipr, cfg.bridge)
            if index is None:
                # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which
                # changes as VMs come and go and makes every guest's ARP entry go stale.
                await ipr.link("add", ifname=cfg.bridge, kind="bridge", address=vm_mac(f"bridge:{cfg.bridge}"))
                index = await self._link_index(ipr, cfg.bridge)
            link = await self._link(ipr, index)
            if link.get(("linkinfo", "kind")) != "bridge":
                raise AgentError(f"{cfg.bridge} exists and is not a bridge", permanent=True)
            have = {
                (addr.get("address"), addr["prefixlen"]) async for addr in await ipr.get_addr(index=index)
            }
            if (str(cfg.gateway), cfg.subnet.prefixlen) not in have:
                await ipr.addr("add", index=index, address=str(cfg.gateway), prefixlen=cfg.subnet.prefixlen)
            if not link["flags"] & IFF_UP:
                await ipr.link("set", index=index, state="up")
        await self._host.ensure_sysctl("net/ipv4/ip_forward", "1")
        # Published ports must answer `curl 127.0.0.1:<port>` on the node itself: the output
        # chain DNATs such a connection to the VM, but the kernel refuses to route a packet
        # with a 127/8 source out of a non-loopback link ("martian") unless route_localnet is
        # set on that link. We set it on the bridge only, masquerade 127/8 sources leaving
        # by the bridge (so the VM sees and answers the gateway, and conntrack maps the reply
        # back), and drop anything arriving from the bridge with a 127/8 source or
        # destination, which route_localnet would otherwise let a VM send to the host's
        # loopback services (the hole of kubernetes CVE-2020-8558).
        await self._host.ensure_sysctl(f"net/ipv4/conf/{cfg.bridge}/route_localnet", "1")
        # Every VM's traffic to another VM goes through the gateway (its port is isolated) and
        # is dropped there; an ICMP redirect would tell the sender to go direct, which cannot
        # work either, and would only show it its neighbours' addresses. The kernel sends
        # redirects when `all` OR the interface says so, hence both (the host's other links
        # lose them too: a router that is not one for its LAN needs none).
        for conf in ("all", cfg.bridge):
            await self._host.ensure_sysctl(f"net/ipv4/conf/{conf}/send_redirects", "0")
        # VMs get IPv4 only and their TAPs may not send IPv6: with no address of the node on
        # the bridge (not even fe80::), no service listening on :: is reachable from it either.
        if await self._host.sysctl_exists(f"net/ipv6/conf/{cfg.bridge}/disable_ipv6"):
            await self._host.ensure_sysctl(f"net/ipv6/conf/{cfg.bridge}/disable_ipv6", "1")
        await self._nft.sync(HOST_OWNER, host_rules(
            bridge=cfg.bridge, subnet=cfg.subnet, gateway=cfg.gateway, uplink=cfg.uplink,
            nameservers=await self._nameservers(), blocked=blocked_set(cfg.blocked_networks),
        ))

    async def _nameservers(self) -> tuple[str, ...]:
        if self.config.nameservers is not None:
            return tuple(self.config.nameservers)
        return tuple(await asyncio.to_thread(host_nameservers))

    async def _lease_address(self, name: str) -> VmLease:
        leases: Leases = await self._leases.read()
        before = leases.to_json()
        lease = leases.lease_address(name, self.config.subnet, {self.config.gateway})
        if leases.to_json() != before:
            await self._leases.write(leases)
        return lease

    @contextlib.asynccontextmanager
    async def _ipr(self) -> AsyncIterator[AsyncIPRoute]:
        if self.netns is None:
            ipr = AsyncIPRoute()
        else:
            # pyroute2 would open the namespace's socket lazily, forking a helper and
            # waiting on it from the event loop; done here in a thread instead. flags=0: it
            # would otherwise create a missing namespace (O_CREAT by default).
            try:
                sock = await asyncio.to_thread(
                    create_socket, self.netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE, flags=0
                )
            except FileNotFoundError:
                # Deleted under a running agent, say: a reason, not an errno.
                raise AgentError(f"network namespace {self.netns!r} does not exist", permanent=True) from None
            ipr = AsyncIPRoute(fileno=sock.detach())
        async with ipr:
            yield ipr

    @staticmethod
    async def _link_index(ipr: AsyncIPRoute, ifname: str) -> int | None:
        found = await ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    @staticmethod
    async def _link(ipr: AsyncIPRoute, index: int):
        async for link in await ipr.get_links(index):
            return link
        raise AgentError(f"link {index} vanished while being configured")
