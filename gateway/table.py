"""The route table the plane pushes (docs/gateway.md), parsed into frozen dataclasses.

Every value that reaches the HAProxy configuration or its map files passes through here first,
so this module is the gateway's defence in depth: a label, host, hash, address or number that is
not exactly what the interface allows is refused with the name of the field, and nothing else
of the push is applied. The config renderer can then write each value as it is: no newline,
quote, space or `#` can get past these checks into a line of the config. A compromised or buggy
plane can point routes at the wrong backends, but it cannot add a line HAProxy would obey.

Field names in errors are dotted paths, as the plane's API spells them: `table.routes.2.host`.

TCP routes (`tcp_routes`, absent when the plane has none) are checked the same way, and their
listen ports against the gateway's own range (`--tcp-ports`) when it has one: a port outside it
is refused rather than silently not served, so the plane's status shows the mismatch.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass

from protocol.routes import (  # noqa: F401  (the shapes this module's callers take from it)
    ACCESS,
    PRIVATE,
    PUBLIC,
    UNAVAILABLE,
    VERSION,
    Backend,
    Route,
    RouteTable,
    TcpRoute,
    canonical_digest,
)

# The shapes are the protocol's (protocol/routes.py): this module checks a push into them.
Table = RouteTable

MAX_TIMEOUT_S = 86400
MAX_BODY_BYTES = 2**40
MAX_STOP_GRACE_S = 86400
# Generous bounds (the plane keeps 20 live keys per deployment): they cap the work one push costs.
MAX_KEYS_PER_ROUTE = 1000
MAX_BACKENDS_PER_ROUTE = 1000
MAX_ROUTES = 100_000
MAX_TCP_ROUTES = 65535  # one per port at most
MAX_DNS_NAME = 253

# fullmatch, never match with `$`: in Python `$` also matches before a trailing newline.
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class TableError(ValueError):
    """A push that is not the interface: `field` is the first bad field's dotted path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PortRange:
    """The gateway's TCP listen ports, both ends included (`--tcp-ports 20000-20999`)."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


EMPTY = Table(domain="", routes=())  # what a gateway serves from its start until the first push


@dataclass(frozen=True)
class Push:
    digest: str
    table: Table


def parse_push(body: bytes, tcp_ports: PortRange | None = None) -> Push:
    """The body of `PUT /v1/routes`, or TableError for the first thing wrong with it. `tcp_ports`:
    the gateway's TCP listen ports, which every TCP route's must be in (None: any port, the
    gateway serving no TCP route)."""
    try:
        document = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, duplicate keys, NaN and integers past Python's digit limit.
        raise TableError("body", f"not a JSON document: {exc}") from None
    obj = _object(document, "body", {"version", "digest", "table"})
    if type(obj["version"]) is not int or obj["version"] != VERSION:
        raise TableError("version", f"must be {VERSION}")
    digest = _string(obj["digest"], "digest")
    if not _SHA256_HEX.fullmatch(digest):
        raise TableError("digest", "must be 64 lowercase hex digits")
    table = parse_table(obj["table"], "table", tcp_ports)
    if canonical_digest(obj["table"]) != digest:
        raise TableError("digest", "is not the sha256 of the table's canonical JSON")
    return Push(digest=digest, table=table)


def parse_table(value: object, field: str = "table", tcp_ports: PortRange | None = None) -> Table:
    obj = _object(value, field, {"domain", "routes"}, optional={"tcp_routes"})
    domain = _dns_name(obj["domain"], f"{field}.domain")
    routes = _array(obj["routes"], f"{field}.routes", MAX_ROUTES)
    parsed = tuple(_route(item, f"{field}.routes.{i}", domain) for i, item in enumerate(routes))
    seen: set[str] = set()
    for i, route in enumerate(parsed):
        if route.label in seen:
            raise TableError(f"{field}.routes.{i}.label", f"{route.label!r} is the label of an earlier route")
        seen.add(route.label)
    tcp = _array(obj.get("tcp_routes", []), f"{field}.tcp_routes", MAX_TCP_ROUTES)
    tcp_routes = tuple(_tcp_route(item, f"{field}.tcp_routes.{i}", tcp_ports) for i, item in enumerate(tcp))
    names: set[str] = set()
    ports: set[int] = set()
    for i, tcp_route in enumerate(tcp_routes):
        if tcp_route.name in names:
            raise TableError(f"{field}.tcp_routes.{i}.name", f"{tcp_route.name!r} is the name of an earlier TCP route")
        if tcp_route.listen_port in ports:
            raise TableError(f"{field}.tcp_routes.{i}.listen_port",
                             f"{tcp_route.listen_port} is the listen port of an earlier TCP route")
        names.add(tcp_route.name)
        ports.add(tcp_route.listen_port)
    return Table(domain=domain, routes=parsed, tcp_routes=tcp_routes)


def _route(value: object, field: str, domain: str) -> Route:
    obj = _object(value, field, {"label", "host", "access", "key_hashes", "unavailable", "timeout_s",
                                 "max_body_bytes", "stop_grace_seconds", "backends"})
    label = _string(obj["label"], f"{field}.label")
    if not LABEL.fullmatch(label):
        raise TableError(f"{field}.label", "must be a DNS label: a-z, 0-9 and inner '-', at most 63 characters")
    host = _string(obj["host"], f"{field}.host")
    if host != f"{label}.{domain}":
        raise TableError(f"{field}.host", "must be the label, a dot and the table's domain")
    access = _string(obj["access"], f"{field}.access")
    if access not in ACCESS:
        raise TableError(f"{field}.access", f"must be one of {', '.join(ACCESS)}")
    hashes = _array(obj["key_hashes"], f"{field}.key_hashes", MAX_KEYS_PER_ROUTE)
    key_hashes = []
    for i, item in enumerate(hashes):
        digest = _string(item, f"{field}.key_hashes.{i}")
        if not _SHA256_HEX.fullmatch(digest):
            raise TableError(f"{field}.key_hashes.{i}", "must be a sha256 digest: 64 lowercase hex digits")
        if digest in key_hashes:
            raise TableError(f"{field}.key_hashes.{i}", "is listed twice")
        key_hashes.append(digest)
    backends = _backends(obj["backends"], f"{field}.backends")
    unavailable = _string(obj["unavailable"], f"{field}.unavailable")
    if backends and unavailable != "":
        raise TableError(f"{field}.unavailable", "must be empty when the route has backends")
    if not backends and unavailable not in UNAVAILABLE:
        raise TableError(f"{field}.unavailable", f"must say why there is no backend: one of {', '.join(UNAVAILABLE)}")
    return Route(
        label=label, host=host, access=access, key_hashes=tuple(key_hashes), unavailable=unavailable,
        timeout_s=_int(obj["timeout_s"], f"{field}.timeout_s", 1, MAX_TIMEOUT_S),
        max_body_bytes=_int(obj["max_body_bytes"], f"{field}.max_body_bytes", 1, MAX_BODY_BYTES),
        stop_grace_seconds=_int(obj["stop_grace_seconds"], f"{field}.stop_grace_seconds", 0, MAX_STOP_GRACE_S),
        backends=backends,
    )


def _tcp_route(value: object, field: str, tcp_ports: PortRange | None) -> TcpRoute:
    obj = _object(value, field, {"name", "listen_port", "timeout_s", "stop_grace_seconds", "backends"})
    name = _string(obj["name"], f"{field}.name")
    if not LABEL.fullmatch(name):
        raise TableError(f"{field}.name", "must be a DNS label: a-z, 0-9 and inner '-', at most 63 characters")
    listen_port = _int(obj["listen_port"], f"{field}.listen_port", 1, 65535)
    if tcp_ports is not None and listen_port not in tcp_ports:
        raise TableError(f"{field}.listen_port", f"must be one of this gateway's TCP ports, {tcp_ports} (--tcp-ports)")
    return TcpRoute(
        name=name, listen_port=listen_port,
        timeout_s=_int(obj["timeout_s"], f"{field}.timeout_s", 1, MAX_TIMEOUT_S),
        stop_grace_seconds=_int(obj["stop_grace_seconds"], f"{field}.stop_grace_seconds", 0, MAX_STOP_GRACE_S),
        backends=_backends(obj["backends"], f"{field}.backends"),
    )


def _backends(value: object, field: str) -> tuple[Backend, ...]:
    items = _array(value, field, MAX_BACKENDS_PER_ROUTE)
    backends = tuple(_backend(item, f"{field}.{i}") for i, item in enumerate(items))
    replicas = [b.replica for b in backends]
    for i, replica in enumerate(replicas):
        if replica in replicas[:i]:
            raise TableError(f"{field}.{i}.replica", "is listed twice")
    return backends


def _backend(value: object, field: str) -> Backend:
    obj = _object(value, field, {"replica", "address", "port"})
    replica = _string(obj["replica"], f"{field}.replica")
    try:
        canonical = str(uuid.UUID(replica))
    except ValueError:
        canonical = None
    if canonical != replica:
        raise TableError(f"{field}.replica", "must be a UUID in its canonical form")
    raw = _string(obj["address"], f"{field}.address")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise TableError(f"{field}.address", "must be an IPv4 or IPv6 address literal") from None
    # A scope id (`fe80::1%eth0`) is free text after the `%`: no route needs one.
    if address.version == 6 and address.scope_id is not None:
        raise TableError(f"{field}.address", "must not carry a scope id")
    if address.is_unspecified or address.is_multicast:
        raise TableError(f"{field}.address", "must be a unicast address a backend can listen on")
    return Backend(replica=replica, address=str(address), port=_int(obj["port"], f"{field}.port", 1, 65535))


def _dns_name(value: object, field: str) -> str:
    name = _string(value, field)
    if len(name) > MAX_DNS_NAME - 64 or not all(LABEL.fullmatch(part) for part in name.split(".")):
        raise TableError(field, "must be a lowercase DNS name short enough to take a 63-character label in front")
    return name


def _object(value: object, field: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise TableError(field, "must be an object")
    for key in sorted(keys - value.keys()):
        raise TableError(f"{field}.{key}", "is missing")
    for key in sorted(value.keys() - keys - optional):
        raise TableError(f"{field}.{key}", "is not a field of this object")
    return value


def _array(value: object, field: str, most: int) -> list:
    if not isinstance(value, list):
        raise TableError(field, "must be an array")
    if len(value) > most:
        raise TableError(field, f"has more than {most} items")
    return value


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TableError(field, "must be a string")
    return value


def _int(value: object, field: str, least: int, most: int) -> int:
    # bool is an int in Python; `true` is not a number in the interface.
    if type(value) is not int or not least <= value <= most:
        raise TableError(field, f"must be an integer from {least} to {most}")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Two values for one key: which one the digest covered is anyone's guess.
        raise ValueError("an object has a key twice")
    return obj


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")
