"""Which address a request really comes from, for the front doors' throttles.

Behind a load balancer every request's direct peer (REMOTE_ADDR) is the balancer: counting per
peer would throttle every customer at once. X-Forwarded-For names the client, but anyone can
send one, so it is read only when the direct peer is a proxy the operator trusts
(`GANTRY_TRUSTED_PROXIES`: addresses and CIDRs). Each trusted proxy appends the address it saw,
so the list is read from the right: the first address that is not itself a trusted proxy is the
client. Everything to its left was written by the client and is ignored.

IPv6 clients are counted per /64: a single host commonly holds a whole /64, and counting per
/128 would let it spread its guesses over 2^64 addresses.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8)
def _networks(raw: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in raw if item.strip())


def trusted_proxies() -> tuple[Network, ...]:
    raw = settings.GANTRY_TRUSTED_PROXIES
    if isinstance(raw, str):
        raw = raw.split(",")
    return _networks(tuple(raw))


def _parse(value: str) -> Address | None:
    value = value.strip().strip('"')
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(request) -> Address | None:
    peer = _parse(request.META.get("REMOTE_ADDR", ""))
    networks = trusted_proxies()
    if peer is None or not networks or not _trusted(peer, networks):
        return peer
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    nearest = peer
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            # A trusted proxy writes addresses; garbage here came from further left, so the
            # last trusted hop is the best we know.
            return nearest
        if not _trusted(address, networks):
            return address
        nearest = address
    return nearest  # every hop is a trusted proxy: the request started inside


def client_ip(request) -> str:
    """The key the throttles count under: the client's address, or its /64 for IPv6."""
    address = client_address(request)
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
