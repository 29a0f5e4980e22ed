"""The gateway's route table, built whole from the database (issue 25).

One name per deployment that serves HTTP (it has a `traffic_port`), and behind it the replicas
that may take a request now: running, health check not failing, still wanted, on a node with a
public address (the same address and host port as a replica's `endpoint` in the API). With no
such replica the route says why (`unavailable`), which the gateway's 503 repeats. A private
route carries the hashes of its live endpoint keys. Each extra HTTP port of a deployment's
`expose` is one more route, `<label>-<name>`, with the same settings and the replicas that
publish that port; each TCP port is a `tcp_routes` entry on its gateway port (GatewayPort),
open to anyone. The table is the operator's, across every tenant; it is plain data, sorted, so
that two builds of an unchanged database are equal and `digest()` tells a pusher that nothing
changed. The gateway checks every field and refuses a malformed table whole (docs/gateway.md),
which is why the columns behind them are bounded by constraints too, and why a label is never
sent twice.
"""

from __future__ import annotations

import functools
import operator

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Exists, OuterRef, Q, QuerySet

from cloud.deployments.labels import endpoint_host, expose_label
from cloud.deployments.models import SHORTAGE_PREFIXES, Deployment, EndpointKey, GatewayPort, Replica
from nodes import selectors as node_selectors
from protocol.routes import NO_CAPACITY, STARTING, STOPPED, Backend, Route, RouteTable, TcpRoute
from protocol.vocabulary import EXPOSE_HTTP, EXPOSE_TCP, FAILING, LIVE_STATUSES, PENDING, RUN, RUNNING

MB = 1024 * 1024


def serving_replicas() -> QuerySet[Replica]:
    """Replicas that may take a request now, but for their node's public address (read through
    the nodes app) and for which of their ports: the route table's backends, and what the API's
    `ready` counts. A port is served where its host port is known: `host_port` for traffic_port,
    `host_ports` for every port (a deployment may have extra ports and no traffic port)."""
    return (Replica.objects.filter(Q(host_port__isnull=False) | ~Q(host_ports={}), state=RUNNING, desired=RUN,
                                   node__isnull=False)
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
    """Three queries whatever the number of deployments, ports and keys: deployments (with their
    live key hashes, capacity shortage and gateway ports as subqueries), serving replicas, node
    addresses."""
    served = Deployment.objects.filter(deleted_at__isnull=True).filter(Q(traffic_port__isnull=False) | ~Q(expose=[]))
    held = GatewayPort.objects.filter(deployment_id=OuterRef("pk")).order_by("port")
    deployments = list(
        served.annotate(
            key_hash_list=ArraySubquery(
                EndpointKey.objects.filter(deployment_id=OuterRef("pk"), revoked_at__isnull=True)
                .order_by("secret_hash").values("secret_hash")),
            short_of_capacity=_short_of_capacity(),
            tcp_names=ArraySubquery(held.values("name")),
            tcp_ports=ArraySubquery(held.values("port")),
        ).values_list("pk", "endpoint_label", "status", "endpoint_access", "key_hash_list", "short_of_capacity",
                      "request_timeout_s", "max_request_body_mb", "stop_grace_seconds", "traffic_port", "expose",
                      "tcp_names", "tcp_ports")
    )
    replicas = list(
        serving_replicas().filter(deployment__in=served)
        .values_list("deployment_id", "uid", "node_id", "host_port", "host_ports")
    )
    addresses = node_selectors.public_addresses({node_id for _, _, node_id, _, _ in replicas})
    serving: dict = {}
    for deployment_id, uid, node_id, host_port, host_ports in replicas:
        if node_id in addresses:
            serving.setdefault(deployment_id, []).append((str(uid), addresses[node_id], host_port, host_ports or {}))

    def backends(pk, guest_port: int, *, traffic: bool) -> tuple[Backend, ...]:
        # The traffic port's host port is `host_port` (an agent older than `expose` reports no
        # host_ports); an extra port's is in host_ports, once a replica started with it.
        found = [Backend(replica=uid, address=address, port=host_port if traffic else host_ports.get(str(guest_port)))
                 for uid, address, host_port, host_ports in serving.get(pk, ())]
        return tuple(sorted((b for b in found if b.port), key=lambda b: b.replica))

    routes: list[tuple[str, bool, Route]] = []
    tcp_routes: list[TcpRoute] = []
    for (pk, label, status, access, key_hashes, short, timeout_s, body_mb, grace, traffic_port, expose,
         tcp_names, tcp_ports) in deployments:
        names = [("", traffic_port)] if traffic_port else []
        names += [(entry["name"], entry["port"]) for entry in expose if entry["protocol"] == EXPOSE_HTTP]
        for name, guest_port in names:
            mine = backends(pk, guest_port, traffic=not name)
            route_label = expose_label(label, name) if name else label
            routes.append((route_label, bool(name), Route(
                label=route_label, host=endpoint_host(route_label), access=access, key_hashes=tuple(key_hashes or ()),
                unavailable=_unavailable(backends=mine, status=status, short_of_capacity=short),
                timeout_s=timeout_s, max_body_bytes=body_mb * MB, stop_grace_seconds=grace, backends=mine,
            )))
        listen = dict(zip(tcp_names or (), tcp_ports or ()))
        for entry in expose:
            if entry["protocol"] == EXPOSE_TCP and entry["name"] in listen:
                tcp_routes.append(TcpRoute(
                    name=expose_label(label, entry["name"]), listen_port=listen[entry["name"]], timeout_s=timeout_s,
                    stop_grace_seconds=grace, backends=backends(pk, entry["port"], traffic=False)))
    # Labels are unique by construction but for a 30-bit coincidence (a deployment's random
    # suffix spelling another's label and port name): a deployment's own name wins, and a
    # duplicate never reaches the gateway, which would refuse the whole table over it.
    unique: dict[str, Route] = {}
    for route_label, _derived, route in sorted(routes, key=lambda r: (r[0], r[1])):
        unique.setdefault(route_label, route)
    unique_tcp: dict[str, TcpRoute] = {}
    for tcp_route in sorted(tcp_routes, key=lambda r: r.listen_port):
        unique_tcp.setdefault(tcp_route.name, tcp_route)
    return RouteTable(domain=settings.GANTRY_ENDPOINT_DOMAIN, routes=tuple(unique[label] for label in sorted(unique)),
                      tcp_routes=tuple(unique_tcp.values()))
