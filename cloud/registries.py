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
(`nodes/agent/oci/egress.py`; DNS may answer differently there and later). Both judge
addresses with `protocol/addresses.py`, so the two cannot disagree about one.
"""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Callable, Iterable

from protocol import addresses

# A name lookup must not hold an API request for long: an answer later than this is treated as
# no answer, and the node (which resolves again at pull time) decides.
RESOLVE_TIMEOUT_S = 2.0
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry-dns")


def registry_of(reference: str) -> str | None:
    """The `host[:port]` a reference names, or None for Docker Hub (no registry component).
    Docker's rule: the first component is a registry only with a '.' or ':' or as localhost."""
    name = reference.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


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
    host, port = addresses.split_host_port(registry)
    if addresses.is_trusted(host, port, addresses.parse_trusted(trusted)):
        return None
    literal = addresses.ip_literal(host)
    if literal is not None:
        kind = addresses.special_address(literal)
        return None if kind is None else _refusal(f"registry {registry} is a {kind} address")
    if addresses.is_loopback_name(host):
        return _refusal(f"registry {registry} is a loopback name")
    for text in (resolve or resolve_host)(host):
        address = addresses.resolved_address(text)
        kind = addresses.special_address(address)
        if kind is not None:
            return _refusal(f"registry {registry} resolves to {address}, a {kind} address")
    return None


def _refusal(what: str) -> str:
    return (f"{what}. Images are pulled only from registries on public addresses, or from those the "
            "operator trusts (GANTRY_TRUSTED_REGISTRIES).")
