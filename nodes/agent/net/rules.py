"""The node's network policy as nftables rules: each VM is an island with a door.

A VM reaches the internet through NAT and is reached on its published ports, from anywhere
(or, on a node given the endpoint gateways' addresses, from those only); nothing else (DESIGN 7,
docs/security.md). The pieces, and the mechanism that holds each:

| promise | mechanism |
|---|---|
| a VM cannot reach another VM at layer 2 | `bridge gantry` forward: nothing from a TAP to another port, ARP included |
| ... nor routed through the gateway | `forward`: bridge to bridge only when DNATed (a published port) |
| ... nor the node's addresses and services | `input`: from the bridge, replies only (plus DNS to its nameservers) |
| ... nor the node's loopback | `guard`: 127/8 from the bridge dropped before routing |
| ... nor link-local (metadata), private or other special networks | `forward`: `blocked` destinations dropped |
| only published ports reach a VM | `forward`: to the bridge only replies and DNATed flows |
| ... only from the endpoint gateways, when given | `guard`, per VM: others' SYNs reset before DNAT |
| no spoofed source IP or MAC, no ARP for another address, no IPv6/ND | `bridge gantry`, per TAP |
| DNS still works | `forward`/`input`: its nameservers on port 53 before the drops |

Why not the kernel's bridge port isolation (`isolated on`), which says the first row in one
flag: where br_netfilter is active (any host with Docker, and this build host, where it is
built in), a VM calling another VM's published port at the node's address is DNATed inside the
bridge and sent from port to port, and isolation drops it: published ports would answer from
anywhere but a neighbour on the same node. The IPv4 filter sees that traffic (br_netfilter
runs it through `forward`), so the rule that lets DNATed bridge-to-bridge traffic pass also
marks it (HAIRPIN_MARK), and the bridge's forward chain, which runs after br_netfilter's,
drops every frame from a TAP to another port that does not carry the mark. Without
br_netfilter nothing a VM sends is ever forwarded port to port legitimately (the host routes
hairpin traffic and sends it itself), so the same rule is exactly isolation.

The policy is IPv4: VMs get IPv4 addresses only, their TAPs may send IPv4 and ARP and nothing
else, and the bridge has IPv6 off, so there is no IPv6 path to filter (hence an `ip` table,
not `inet`). Rules are plain data; `net/nft.py` keeps them installed, owned and re-checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from nodes.agent.net.nft import Rule

LOOPBACK_NET = "127.0.0.0/8"
# One bit of the packet mark (others' bits are kept): "DNATed to a published port", set by the
# IPv4 filter, read by the bridge. Kubernetes uses 0x4000/0x8000, Weave 0x20000/0x40000.
HAIRPIN_MARK = 0x01000000
# Destinations no VM may open a connection to: IANA's special-purpose IPv4 ranges (RFC 6890 and
# successors): "this network", private, shared CGNAT, loopback, link-local (cloud metadata at
# 169.254.169.254), IETF protocol assignments, benchmarking, multicast, reserved, broadcast.
# Not the three documentation ranges (TEST-NET-1/2/3): real networks never route them, and the
# tests and `make up` use them as "the internet". Operators add their own private networks
# (the control plane's, other nodes') with NetworkConfig.blocked_networks / --block-net.
DEFAULT_BLOCKED = tuple(ipaddress.IPv4Network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
))


def _set(items: Iterable[object]) -> str:
    return "{ " + ", ".join(str(item) for item in items) + " }"


def blocked_set(extra: Iterable[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    # nft refuses overlapping intervals in one set: merge them first.
    return list(ipaddress.collapse_addresses([*DEFAULT_BLOCKED, *extra]))


def host_rules(*, bridge: str, subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
               uplink: str | None, nameservers: Iterable[str],
               blocked: Iterable[ipaddress.IPv4Network]) -> list[Rule]:
    br = f'"{bridge}"'
    out = f'oifname "{uplink}"' if uplink else f"oifname != {br}"
    dns = sorted(set(nameservers), key=ipaddress.IPv4Address)
    # A VM's resolver may sit in a blocked range (a cloud's 169.254.169.253, a 10.x resolver)
    # or on the node itself: DNS to the nameservers it was given, and only that, is let through.
    dns_accept = [f"iifname {br} ip daddr {_set(dns)} meta l4proto {{ tcp, udp }} th dport 53 accept"] if dns else []
    return [
        Rule("guard", f"iifname {br} ip saddr {LOOPBACK_NET} drop"),
        Rule("guard", f"iifname {br} ip daddr {LOOPBACK_NET} drop"),
        # Egress: VMs reach the world as the node's own address.
        Rule("postrouting", f"ip saddr {subnet} {out} masquerade"),
        # Host-local clients of published ports (see route_localnet in network.py).
        Rule("postrouting", f"ip saddr {LOOPBACK_NET} ip daddr {subnet} snat to {gateway}"),
        # Hairpin: a VM calling a published port (its own or another VM's) must see the
        # answer come back through the gateway, not straight from the VM it reached.
        # Matched on addresses and SNATed to the gateway explicitly rather than by
        # `oifname ... masquerade`: with br_netfilter loaded this traffic is DNATed and
        # delivered at bridge level, where the output device is a bridge port with no
        # address for masquerade to take.
        Rule("postrouting", f"ip saddr {subnet} ip daddr {subnet} ct status dnat snat to {gateway}"),
        # The node itself: a VM gets answers to what the node asked (health checks, the
        # node's own clients of published ports) and DNS, nothing it opens itself.
        Rule("input", f"iifname {br} ct state established,related accept"),
        *(Rule("input", body) for body in dns_accept),
        Rule("input", f"iifname {br} drop"),
        # Out of a VM: published ports of other VMs (DNATed, from anywhere, VMs included; both
        # directions, and marked for the bridge, so before the accept of replies), never
        # another VM directly; then replies; never a blocked network.
        Rule("forward", f"iifname {br} oifname {br} ct status dnat "
                        f"meta mark set meta mark | {HAIRPIN_MARK:#010x} accept"),
        Rule("forward", f"iifname {br} oifname {br} drop"),
        Rule("forward", f"iifname {br} ct state established,related accept"),
        *(Rule("forward", body) for body in dns_accept),
        Rule("forward", f"iifname {br} ip daddr {_set(blocked)} drop"),
        # Into a VM from beyond the bridge: replies to what it opened, and its published ports;
        # nothing routed to its address by someone who knows the VM subnet. (From the bridge
        # itself, the rules above have decided.)
        Rule("forward", f"oifname {br} ct state established,related accept"),
        Rule("forward", f"oifname {br} ct status dnat accept"),
        Rule("forward", f"iifname != {br} oifname {br} drop"),
    ]


def dnat_rules(*, address: ipaddress.IPv4Address, ports: dict[int, int], publish_address: str,
               published_from: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> list[Rule]:
    """A VM's published ports: host port -> guest port, from other machines and the node; with
    `published_from`, from other machines only those sources may open a connection (refused)."""
    if publish_address == "0.0.0.0":
        outside = local = "fib daddr type local"
    else:
        outside = f"ip daddr {publish_address}"
        local = f"ip daddr {{ {LOOPBACK_NET}, {publish_address} }}"
    refusal = _refusal(published_from)
    rules = []
    for guest, host in sorted(ports.items()):
        if refusal:
            rules.append(Rule("guard", f"{outside} tcp dport {host} {refusal}"))
        target = f"tcp dport {host} dnat to {address}:{guest}"
        rules.append(Rule("prerouting", f"{outside} {target}"))  # from other machines
        rules.append(Rule("output", f"{local} {target}"))  # from the node itself
    return rules


def _refusal(published_from: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """What closes a published port to all but `published_from` ("" when none is given: open).

    A connection's opening (SYN) from any other source is answered with a TCP reset, so a
    client that should have gone through the gateway fails at once instead of hanging. It is
    matched in `guard` (prerouting, before conntrack and NAT), where the packet still carries
    the address and port the client used, and so does the reset: after DNAT (in `forward`) the
    reset would come from the VM's address, and where br_netfilter bridges a VM's call to a
    published port the kernel sends it as is, and the caller ignores it and hangs. Without a
    SYN no connection opens (a stray ACK that conntrack picks up reaches the VM, which resets
    it), so the replies and ACKs of what a VM opened itself are never touched.

    The node's own clients (output-hook DNAT) never pass prerouting: the node reaches its VMs'
    addresses directly anyway. The table is IPv4, as published ports are (no IPv6 DNAT), so
    IPv6 sources reach no published port either way: only IPv4 prefixes are listed, and a
    list without one closes published ports to every source."""
    sources = list(published_from)
    if not sources:
        return ""
    v4 = list(ipaddress.collapse_addresses(net for net in sources if net.version == 4))
    allowed = f"ip saddr != {_set(v4)} " if v4 else ""
    return f"tcp flags & (fin | syn | rst | ack) == syn {allowed}reject with tcp reset"


def port_rules(*, tap: str, mac: str, address: ipaddress.IPv4Address) -> list[Rule]:
    """One TAP's rules in table `bridge gantry`. Anti-spoofing: its frames carry its own MAC,
    IPv4 packets its own address, ARP claims only its own pair; nothing but IPv4 and ARP
    (no IPv6 and so no ND, no VLAN tags, no STP). Isolation: nothing it sends goes to another
    port of the bridge, unless the IPv4 filter marked it as a published port's traffic."""
    port = f'iifname "{tap}"'
    return [
        Rule("forward", f"{port} meta mark & {HAIRPIN_MARK:#010x} != {HAIRPIN_MARK:#010x} drop"),
        Rule("prerouting", f"{port} ether saddr != {mac} drop"),
        Rule("prerouting", f"{port} ether type != {{ ip, arp }} drop"),
        Rule("prerouting", f"{port} ip saddr != {address} drop"),
        Rule("prerouting", f"{port} arp saddr ether != {mac} drop"),
        Rule("prerouting", f"{port} arp saddr ip != {address} drop"),
    ]
