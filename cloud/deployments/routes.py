"""The gateway's route table, built whole from the database (issue 25).

One name per deployment that serves HTTP (it has a `traffic_port`), and behind it the replicas
that may take a request now: running, health check not failing, still wanted, on a node with a
public address (the same address and host port as a replica's `endpoint` in the API). With no
such replica the route says why (`unavailable`), which the gateway's 503 repeats. A private
route carries the hashes of its live endpoint keys. The table is the operator's, across every
tenant; it is plain data, sorted, so that two builds of an unchanged database are equal and
`digest()` tells a pusher that nothing changed. The gateway checks every field and refuses a
malformed table whole (docs/gateway.md), which is why the columns behind them are bounded by
constraints too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from dataclasses import asdict, dataclass

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Exists, OuterRef, Q, QuerySet

from cloud.deployments.labels import endpoint_host
from cloud.deployments.models import SHORTAGE_PREFIXES, Deployment, EndpointKey, Replica
from nodes import selectors as node_selectors
from protocol.vocabulary import FAILING, LIVE_STATUSES, PENDING, RUN, RUNNING

# Why a route has no backend, as the gateway's 503 says it.
STARTING = "starting"
NO_CAPACITY = "no capacity"
STOPPED = "stopped"

MB = 1024 * 1024


@dataclass(frozen=True)
class Backend:
    replica: str  # the incarnation's uid
    address: str
    port: int


@dataclass(frozen=True)
class Route:
    label: str
    host: str
    access: str
    key_hashes: tuple[str, ...]  # sha256 hex of each live endpoint key, sorted
    unavailable: str  # "" with backends, else STARTING, NO_CAPACITY or STOPPED
    timeout_s: int
    max_body_bytes: int
    stop_grace_seconds: int  # how long a leaving backend's requests may take to finish
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class RouteTable:
    domain: str
    routes: tuple[Route, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def serving_replicas() -> QuerySet[Replica]:
    """Replicas that may take a request now, but for their node's public address (read through
    the nodes app): the route table's backends, and what the API's `ready` counts."""
    return (Replica.objects.filter(state=RUNNING, desired=RUN, host_port__isnull=False, node__isnull=False)
            .exclude(health=FAILING))


def _short_of_capacity() -> Exists:
    waiting = functools.reduce(operator.or_, (Q(reason__startswith=prefix) for prefix in SHORTAGE_PREFIXES))
    return Exists(Replica.objects.filter(waiting, deployment_id=OuterRef("pk"), state=PENDING, desired=RUN,
                                         node__isnull=True))


def _unavailable(*, backends, status: str, short_of_capacity: bool) -> str:
    if backends:
        return ""
    if status not in LIVE_STATUSES:
        return STOPPED  # stopping, stopped, failed or expired: nothing will serve until a start
    return NO_CAPACITY if short_of_capacity else STARTING


def route_table() -> RouteTable:
    """Three queries whatever the number of deployments and keys: deployments (with their live
    key hashes and capacity shortage as subqueries), serving replicas, node addresses."""
    served = Deployment.objects.filter(deleted_at__isnull=True, traffic_port__isnull=False)
    deployments = list(
        served.annotate(
            key_hash_list=ArraySubquery(
                EndpointKey.objects.filter(deployment_id=OuterRef("pk"), revoked_at__isnull=True)
                .order_by("secret_hash").values("secret_hash")),
            short_of_capacity=_short_of_capacity(),
        ).values_list("pk", "endpoint_label", "status", "endpoint_access", "key_hash_list", "short_of_capacity",
                      "request_timeout_s", "max_request_body_mb", "stop_grace_seconds")
    )
    replicas = list(
        serving_replicas().filter(deployment__in=served).values_list("deployment_id", "uid", "node_id", "host_port")
    )
    addresses = node_selectors.public_addresses({node_id for _, _, node_id, _ in replicas})
    backends: dict = {}
    for deployment_id, uid, node_id, host_port in replicas:
        if node_id in addresses:
            backends.setdefault(deployment_id, []).append(Backend(replica=str(uid), address=addresses[node_id],
                                                                  port=host_port))
    routes = []
    for pk, label, status, access, key_hashes, short, timeout_s, body_mb, grace in deployments:
        mine = tuple(sorted(backends.get(pk, ()), key=lambda b: b.replica))
        routes.append(Route(
            label=label, host=endpoint_host(label), access=access, key_hashes=tuple(key_hashes or ()),
            unavailable=_unavailable(backends=mine, status=status, short_of_capacity=short),
            timeout_s=timeout_s, max_body_bytes=body_mb * MB, stop_grace_seconds=grace, backends=mine,
        ))
    return RouteTable(domain=settings.GANTRY_ENDPOINT_DOMAIN, routes=tuple(sorted(routes, key=lambda r: r.label)))
