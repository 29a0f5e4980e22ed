"""The gateway's route table, built whole from the database (issue 25).

One name per deployment that serves HTTP (it has a `traffic_port`), and behind it the replicas
that may take a request now: running, health check not failing, still wanted, on a node with a
public address (the same address and host port as a replica's `endpoint` in the API). The
table is the operator's, across every tenant; it is plain data, sorted, so that two builds of
an unchanged database are equal and `digest()` tells a pusher that nothing changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from django.conf import settings

from cloud.deployments.labels import endpoint_host
from cloud.deployments.models import Deployment, Replica
from nodes import selectors as node_selectors
from protocol.vocabulary import FAILING, RUN, RUNNING

PRIVATE = "private"  # the only access until endpoint keys exist (issue 25, a later step)


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


def route_table() -> RouteTable:
    """Three queries whatever the number of deployments: deployments, serving replicas, node addresses."""
    served = Deployment.objects.filter(deleted_at__isnull=True, traffic_port__isnull=False)
    deployments = list(served.values_list("pk", "endpoint_label", "stop_grace_seconds"))
    replicas = list(
        Replica.objects.filter(deployment__in=served, state=RUNNING, desired=RUN, host_port__isnull=False,
                               node__isnull=False)
        .exclude(health=FAILING)
        .values_list("deployment_id", "uid", "node_id", "host_port")
    )
    addresses = node_selectors.public_addresses({node_id for _, _, node_id, _ in replicas})
    backends: dict = {}
    for deployment_id, uid, node_id, host_port in replicas:
        if node_id in addresses:
            backends.setdefault(deployment_id, []).append(Backend(replica=str(uid), address=addresses[node_id],
                                                                  port=host_port))
    routes = (
        Route(label=label, host=endpoint_host(label), access=PRIVATE, stop_grace_seconds=grace,
              backends=tuple(sorted(backends.get(pk, ()), key=lambda b: b.replica)))
        for pk, label, grace in deployments
    )
    return RouteTable(domain=settings.GANTRY_ENDPOINT_DOMAIN, routes=tuple(sorted(routes, key=lambda r: r.label)))
