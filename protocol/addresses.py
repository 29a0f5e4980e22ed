"""Which addresses a customer's word may send us to: no SSRF through image references.

A node pulls what a customer names, from the node's own network, where 127.0.0.1, the control
plane's private network and a cloud's metadata service (169.254.169.254) are all one hop away.
So a registry on a loopback, link-local, private or otherwise special-purpose address, or a
name that resolves to one, is refused unless the operator trusts it (`host[:port]` entries).

Two places judge it: the plane when a customer writes the reference (`cloud/registries.py`,
early feedback) and the agent when it connects (`nodes/agent/oci/egress.py`, the check that
counts: DNS may answer differently on the node and later). Both call this module, so they
cannot drift apart. Standard library only: the agent imports it beside `protocol/wire.py`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Trusted = frozenset[tuple[str, int | None]]

# IPv4 reached through IPv6: NAT64's well-known prefix (RFC 6052) maps a.b.c.d to 64:ff9b::a.b.c.d.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, NAT64, 6to4), if any."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def special_address(address: Address) -> str | None:
    """What makes `address` no place to pull an image from, or None for a public address.
    IPv6 forms that lead to an IPv4 address are judged by that address: `::ffff:8.8.8.8` is as
    public as 8.8.8.8, and `64:ff9b::a9fe:a9fe` is the metadata service."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return special_address(inner)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        # IPv6 space outside 2000::/3 that is_global still calls global (4000::/3, the
        # deprecated IPv4-compatible ::a.b.c.d): no registry lives there, so nothing is lost.
        return "reserved"
    if not address.is_global:
        return "special-purpose"
    return None


def ip_literal(host: str) -> Address | None:
    """`host` as an address if it is one, in any form the C resolver would take as one:
    `127.1`, `2130706433` and `0x7f.1` all mean 127.0.0.1 to inet_aton."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def resolved_address(text: str) -> Address:
    """An address as getaddrinfo answers it; a link-local IPv6 one may carry a `%zone`."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def is_loopback_name(host: str) -> bool:
    """RFC 6761: `localhost` and its subdomains are loopback, whatever a resolver would say."""
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) to (lowercased host without brackets, port or None)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    return host.lower(), int(port) if port.isdigit() else None


def parse_trusted(entries: Iterable[str]) -> Trusted:
    """Operator entries `host[:port]`: a port names exactly that registry, no port trusts the
    host on every port."""
    return frozenset(split_host_port(entry.strip()) for entry in entries if entry.strip())


def is_trusted(host: str, port: int | None, trusted: Trusted) -> bool:
    host = host.lower().strip("[]")
    return (host, None) in trusted or (port is not None and (host, port) in trusted)
