"""Where an image pull may connect: no SSRF through image references, enforced on the node.

A customer names the registry; the node connects to it from the node's own network, where
127.0.0.1, the control plane's private network and 169.254.169.254 are all one hop away. So
every socket the registry client opens (the registry, its token service, the blob storage a
registry redirects to) goes through `GuardedBackend.connect_tcp`: unless the operator trusts
that `host[:port]` (`--trusted-registry`, `GANTRY_TRUSTED_REGISTRIES`), the host is resolved
here, at pull time, every address it resolves to must be public, and the connection is made to
the very address that was checked. A second lookup that answers differently (DNS rebinding)
has nothing to swap: there is none.

The control plane refuses the same references when a customer writes them
(`cloud/registries.py`); this is the check that counts, because DNS may answer differently on
the node and later, and the agent imports nothing from the plane. Both judge addresses with
`protocol/addresses.py`, so they cannot disagree about one.

Environment proxies and `.netrc` are not used (httpx's trust_env is off): a proxy would
resolve names where we cannot check them, and a `.netrc` would hand the node's credentials
to whatever host a customer names.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from protocol.addresses import (
    ip_literal,
    is_loopback_name,
    is_trusted,
    parse_trusted,
    resolved_address,
    special_address,
    split_host_port,
)
from nodes.agent.errors import ImageError
from nodes.agent.oci.reference import Reference

Resolver = Callable[[str, int], Awaitable[list[str]]]
TRUSTED_ENV = "GANTRY_TRUSTED_REGISTRIES"


def trusted_from_env(environ: dict[str, str]) -> list[str]:
    return [item.strip() for item in environ.get(TRUSTED_ENV, "").split(",") if item.strip()]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class RegistryPolicy:
    """The operator's trusted registries (`host[:port]`; no port: every port of that host)."""

    def __init__(self, trusted: Iterable[str] = (), *, resolve: Resolver | None = None):
        self.trusted = parse_trusted(trusted)
        self._resolve = resolve or _getaddrinfo

    def is_trusted(self, host: str, port: int | None) -> bool:
        return is_trusted(host, port, self.trusted)

    def check_reference(self, ref: Reference) -> None:
        """Refuse before any connection what the reference alone shows: an address or a
        loopback name. Other names are checked when they are resolved, at connect time."""
        host, port = split_host_port(ref.endpoint)
        if self.is_trusted(host, port):
            return
        literal = ip_literal(host)
        kind = special_address(literal) if literal is not None else None
        if kind is None and is_loopback_name(host):
            kind = "loopback"
        if kind is not None:
            raise _refused(f"registry {ref.endpoint} is a {kind} address")

    async def addresses(self, host: str, port: int, *, registry: str, timeout: float | None) -> list[str]:
        """The addresses to connect to for host:port, every one of them checked."""
        literal = ip_literal(host)
        try:
            if literal is not None:
                found = [str(literal)]
            else:
                found = await asyncio.wait_for(self._resolve(host, port), timeout)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except asyncio.TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        if not found:
            raise httpcore.ConnectError(f"{host} has no address")
        target = f"{host}:{port}"
        for text in found:
            kind = special_address(resolved_address(text))
            if kind is None:
                continue
            via = "is" if text == host.strip("[]") else f"resolves to {text},"
            registry_host, registry_port = split_host_port(registry)
            if registry_host == host.lower().strip("[]") and registry_port in (None, port):
                raise _refused(f"registry {registry} {via} a {kind} address")
            raise _refused(f"registry {registry} sent this node to {target}, which {via} a {kind} address")
        return found


def _refused(what: str) -> ImageError:
    return ImageError(f"{what}: images are pulled only from registries on public addresses, or from those "
                      f"the operator trusts (--trusted-registry, {TRUSTED_ENV})", permanent=True)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy in front of every TCP connection."""

    def __init__(self, policy: RegistryPolicy, registry: str, inner: httpcore.AsyncNetworkBackend | None = None):
        self._policy = policy
        self._registry = registry
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options=None) -> httpcore.AsyncNetworkStream:
        if self._policy.is_trusted(host, port):
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = await self._policy.addresses(host, port, registry=self._registry, timeout=timeout)
        failure: Exception | None = None
        for address in addresses:
            try:
                # The checked address itself, never the name: no second lookup can differ.
                # TLS still verifies the certificate against the name (httpcore's start_tls).
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise ImageError("registries are reached over TCP only", permanent=True)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a GuardedBackend. httpx offers no public way to hand its
    connection pool a network backend, so the pool it builds is replaced by one that has ours;
    test_registry_policy.py fails if a future httpx stops using it."""

    def __init__(self, backend: GuardedBackend, *, verify):
        super().__init__(verify=verify, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify, network_backend=backend,
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0,
        )
