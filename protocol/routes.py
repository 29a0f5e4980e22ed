"""The gateway's route table: what the plane pushes to every gateway (`PUT /v1/routes`,
docs/gateway.md), one shape for both ends.

The plane builds it from the database (cloud/deployments/routes.py); the gateway parses a push
back into these same dataclasses, checking every field (gateway/table.py). Plain data, sorted,
so that two builds of an unchanged database are equal and `digest()` tells a pusher that nothing
changed; the gateway checks the digest it is sent against the table it parsed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from protocol.vocabulary import PRIVATE, PUBLIC

VERSION = 1
ACCESS = (PRIVATE, PUBLIC)

# Why a route has no backend, as the gateway's 503 says it. An enumeration rather than free text:
# the gateway writes the reason into its configuration.
STARTING = "starting"
NO_CAPACITY = "no capacity"
STOPPED = "stopped"
UNAVAILABLE = (STARTING, NO_CAPACITY, STOPPED)


@dataclass(frozen=True)
class Backend:
    replica: str  # the replica incarnation's UUID, canonical form
    address: str  # an IP literal, as ipaddress writes it
    port: int


@dataclass(frozen=True)
class Route:
    label: str
    host: str
    access: str
    key_hashes: tuple[str, ...]  # sha256 hex of each live endpoint key, sorted
    unavailable: str  # "" with backends, else one of UNAVAILABLE
    timeout_s: int
    max_body_bytes: int
    stop_grace_seconds: int  # how long a leaving backend's requests may take to finish
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class TcpRoute:
    name: str  # <label>-<port name>: a DNS label
    listen_port: int  # the gateway port clients connect to
    timeout_s: int
    stop_grace_seconds: int
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class RouteTable:
    domain: str
    routes: tuple[Route, ...]
    tcp_routes: tuple[TcpRoute, ...] = ()  # sorted by listen_port

    def as_dict(self) -> dict:
        table = asdict(self)
        if not self.tcp_routes:
            # A gateway that does not know tcp_routes refuses a table carrying the key: until the
            # first TCP port, the table stays what such a gateway takes (and its digest the same).
            del table["tcp_routes"]
        return table

    def digest(self) -> str:
        return canonical_digest(self.as_dict())


def canonical_digest(table: object) -> str:
    """sha256 of a table's JSON with sorted keys and no spaces: what `RouteTable.digest()` gives."""
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
