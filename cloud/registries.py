"""Which registries a customer's image reference may name: no SSRF through image references.

A node pulls what a customer names, from the node's own network. A reference to
`127.0.0.1:6379/x`, `10.0.0.5/x` or `169.254.169.254/x` would make the node talk to its own
services, the control plane's private network or a cloud's metadata service on the
customer's behalf. So a registry whose host is a loopback, link-local, private or otherwise
special-purpose address, or a name that resolves to one, is refused when the customer writes
the reference (a 400 naming the field: `cloud/fields.py: ImageReferenceField`), unless the
operator trusts that registry (`GANTRY_TRUSTED_REGISTRIES`, comma-separated `host[:port]`).

This check is early feedback, not the boundary: the node resolves the name again when it
pulls, connects only to the address it checked, and refuses special ones itself
(`nodes/agent/oci/egress.py`; DNS may answer differently there and later). The agent imports
nothing from here, so the address rule is written twice; `tests/agent/test_registry_policy.py`
holds the two to the same table.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Callable, Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv4 reached through IPv6: NAT64's well-known prefix (RFC 6052) maps a.b.c.d to 64:ff9b::a.b.c.d.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# A name lookup must not hold an API request for long: an answer later than this is treated as
# no answer, and the node (which resolves again at pull time) decides.
RESOLVE_TIMEOUT_S = 2.0
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry-dns")


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
    """What makes `address` no place to pull an image from, or None for a public address."""
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


def split_host_port(registry: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) to (lowercased host without brackets, port or None)."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = registry.partition(":")
    return host.lower(), int(port) if port.isdigit() else None


def registry_of(reference: str) -> str | None:
    """The `host[:port]` a reference names, or None for Docker Hub (no registry component).
    Docker's rule: the first component is a registry only with a '.' or ':' or as localhost."""
    name = reference.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def parse_trusted(entries: Iterable[str]) -> frozenset[tuple[str, int | None]]:
    """Operator entries `host[:port]`: a port names exactly that registry, no port trusts the
    host on every port."""
    return frozenset(split_host_port(entry.strip()) for entry in entries if entry.strip())


def is_trusted(host: str, port: int | None, trusted: frozenset[tuple[str, int | None]]) -> bool:
    host = host.lower().strip("[]")
    return (host, None) in trusted or (port is not None and (host, port) in trusted)


def resolve_host(host: str) -> list[str]:
    """The addresses `host` resolves to now; [] when it does not resolve within the timeout."""
    future = _resolver.submit(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


def registry_refusal(reference: str, *, trusted: Iterable[str],
                     resolve: Callable[[str], list[str]] | None = None) -> str | None:
    """Why a customer may not pull `reference`, or None. `trusted`: the operator's list."""
    registry = registry_of(reference)
    if registry is None:
        return None  # Docker Hub
    host, port = split_host_port(registry)
    if is_trusted(host, port, parse_trusted(trusted)):
        return None
    literal = ip_literal(host)
    if literal is not None:
        kind = special_address(literal)
        return None if kind is None else _refusal(f"registry {registry} is a {kind} address")
    if host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: always loopback, whatever a resolver would say.
        return _refusal(f"registry {registry} is a loopback name")
    for text in (resolve or resolve_host)(host):
        address = ipaddress.ip_address(text.split("%", 1)[0])
        kind = special_address(address)
        if kind is not None:
            return _refusal(f"registry {registry} resolves to {address}, a {kind} address")
    return None


def _refusal(what: str) -> str:
    return (f"{what}. Images are pulled only from registries on public addresses, or from those the "
            "operator trusts (GANTRY_TRUSTED_REGISTRIES).")
