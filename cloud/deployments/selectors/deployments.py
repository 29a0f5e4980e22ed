"""Tenant-scoped reads of deployments and their replicas, and the visibility rule the log and
event reads share: another tenant's deployment, or a deleted one, is not found (404)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import CharField, Count, Exists, F, Func, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.selectors import billed_interval_annotations, deployment_cost_annotations, funds_notices_expression
from cloud.deployments.models import Deployment, GatewayPort, Replica
from cloud.deployments.routes import serving_replicas
from cloud.exceptions import NotFound
from cloud.validators import as_uuid
from nodes.selectors import replica_gpus
from protocol.vocabulary import LIVE_STATUSES, STOPPING, TERMINAL_STATES
from volumes.selectors import deployment_volumes_annotations

# Columns the API representation shows; the rest (encrypted blobs, registry user, price
# history) stays on disk for the list endpoint, which is benchmarked at 5,000 rows a tenant.
_SHOWN_FIELDS = (
    "id", "tenant_id", "name", "endpoint_label", "status", "status_reason", "template__slug", "image", "env",
    "secret_env_keys", "entrypoint", "args", "traffic_port", "health_check_path", "endpoint_access", "request_timeout_s",
    "max_request_body_mb", "expose", "allow_public_tcp", "gpus_per_container", "hardware_type_id", "node_id", "replica_count",
    "duration_hours", "stop_grace_seconds", "price_per_gpu_hour", "registry_username",
    "created_at", "updated_at", "started_at", "stopped_at", "expires_at",
)

# Deployments that hold (or wait for) hardware, for counting what is in use: the live ones and
# those stopping, whose VMs run until their nodes confirm.
HOLDING_STATUSES = (*LIVE_STATUSES, STOPPING)


def _visible(*, tenant) -> QuerySet[Deployment]:
    return Deployment.objects.filter(tenant=tenant, deleted_at__isnull=True)


def deployments_for(*, tenant, now: datetime | None = None) -> QuerySet[Deployment]:
    """The tenant's deployments, newest first, shaped for the API representation.

    One query whatever the page size: the template slug is joined, and location ids, the
    running replicas' count (ready_replicas), whether one is in the gateway's pool (the
    endpoint's `ready`, as routes.route_table decides it, and its extra ports'), the cost so far
    (metered + accruing up to `now`) and the tenant's funds notices (warnings) come from
    correlated subqueries. Page over `deployment_ids_for` rather than slicing this deep: the
    subqueries would run for every skipped row."""
    now = now or timezone.now()
    queryset = (
        _visible(tenant=tenant)
        .select_related("template")
        .only(*_SHOWN_FIELDS)
        .annotate(
            location_id_list=ArraySubquery(
                Deployment.locations.through.objects.filter(deployment_id=OuterRef("pk"))
                .order_by("location_id").values("location_id")
            ),
            running_count=Coalesce(Subquery(
                Replica.objects.filter(deployment_id=OuterRef("pk"), state=Replica.State.RUNNING,
                                       host_port__isnull=False, node__isnull=False)
                .order_by().values("deployment_id").annotate(n=Count("pk")).values("n"),
                output_field=IntegerField()), 0),
            serving=Exists(serving_replicas().filter(deployment_id=OuterRef("pk"), host_port__isnull=False,
                                                     node__public_address__isnull=False)),
            **_expose_annotations(),
            funds_notices=funds_notices_expression(tenant_ref="tenant_id"),
            **deployment_cost_annotations(now=now),
            **deployment_volumes_annotations(),
        )
        .order_by("-created_at", "-id")
    )
    return queryset


def _expose_annotations() -> dict:
    """For the endpoints of `expose`: the guest ports the serving replicas publish (each an
    extra endpoint's `ready`, as route_table decides it), and the gateway ports the TCP ones
    hold, by name (two arrays in port order)."""
    held = GatewayPort.objects.filter(deployment_id=OuterRef("pk")).order_by("port")
    return {
        "serving_ports": ArraySubquery(
            serving_replicas().filter(deployment_id=OuterRef("pk"), node__public_address__isnull=False)
            .annotate(guest_port=Func(F("host_ports"), function="jsonb_object_keys", output_field=CharField()))
            .values("guest_port")),
        "tcp_names": ArraySubquery(held.values("name")),
        "tcp_ports": ArraySubquery(held.values("port")),
    }


def deployment_ids_for(*, tenant) -> QuerySet:
    """The ids of the tenant's deployments, newest first: the list endpoint pages over this
    (an index-only scan of deployment_tenant_recent_idx, however deep the page) and only then
    loads the page's rows with `deployments_in_order`. Paging over full rows instead makes
    PostgreSQL fetch and join every skipped row from the heap: at page 250 of a 5,000-row
    tenant that was most of the request's time. `?status=` is applied by DeploymentFilter."""
    return _visible(tenant=tenant).order_by("-created_at", "-id").values_list("id", flat=True)


def deployments_in_order(*, tenant, ids: list) -> list[Deployment]:
    """The deployments with these ids (of `tenant` only), shaped for the API, in `ids` order."""
    rows = {d.pk: d for d in deployments_for(tenant=tenant).filter(pk__in=ids)} if ids else {}
    return [rows[i] for i in ids if i in rows]


def _parse_id(deployment_id) -> uuid.UUID:
    pk = as_uuid(deployment_id)
    if pk is None:
        # Not a UUID is "no such deployment", not a validation error: the id is part of the URL.
        raise NotFound(f"No deployment '{deployment_id}'.")
    return pk


def deployment_get(*, tenant, deployment_id) -> Deployment:
    """One deployment of `tenant`, shaped like `deployments_for`; NotFound otherwise."""
    pk = _parse_id(deployment_id)
    deployment = deployments_for(tenant=tenant).filter(pk=pk).first()
    if deployment is None:
        raise NotFound(f"No deployment '{deployment_id}'.")
    return deployment


def _visible_pk(*, tenant, deployment_id) -> uuid.UUID:
    """The id of one visible deployment of `tenant`, for reads of its replicas, logs and events:
    an index lookup, without the representation's subqueries `deployment_get` carries."""
    pk = _parse_id(deployment_id)
    if not _visible(tenant=tenant).filter(pk=pk).exists():
        raise NotFound(f"No deployment '{deployment_id}'.")
    return pk


def deployment_id_for(*, tenant, deployment_id) -> uuid.UUID:
    """The id of one visible deployment of `tenant` (NotFound otherwise), for a reader that needs
    nothing else of it (the event stream's filter)."""
    return _visible_pk(tenant=tenant, deployment_id=deployment_id)


def deployment_get_for_update(*, tenant, deployment_id) -> Deployment:
    """The full row, locked (SELECT ... FOR UPDATE) for a state change; call inside a transaction."""
    pk = _parse_id(deployment_id)
    deployment = _visible(tenant=tenant).select_for_update(of=("self",)).filter(pk=pk).first()
    if deployment is None:
        raise NotFound(f"No deployment '{deployment_id}'.")
    return deployment


def gpus_in_use_for(*, tenant, exclude_id=None) -> int:
    """GPUs the tenant's live deployments ask for (replicas x GPUs each), counted against
    Tenant.max_gpus. Stopped, failed and expired deployments hold nothing; CPU-only hardware
    counts slots, not GPUs."""
    queryset = (
        _visible(tenant=tenant)
        .filter(status__in=HOLDING_STATUSES)
        .filter(hardware_type__cpu_only=False)
    )
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    total = 0
    for gpus, replicas in queryset.values_list("gpus_per_container", "replica_count"):
        total += gpus * replicas
    return total


@dataclass(frozen=True)
class Commitment:
    """What one deployment the tenant has not stopped asks for per hour, before pricing."""

    hardware_type_id: int
    gpus_per_container: int
    replica_count: int
    location_ids: list[int]


def commitments_for(*, tenant, exclude_id=None) -> list[Commitment]:
    """The tenant's deployments that hold (or wait for) hardware: the same set `gpus_in_use_for`
    counts (pending, starting, running, and stopping, whose VMs run until their node confirms),
    for the funds check to price. One query."""
    queryset = _visible(tenant=tenant).filter(status__in=HOLDING_STATUSES)
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    rows = queryset.order_by().annotate(
        location_id_list=ArraySubquery(
            Deployment.locations.through.objects.filter(deployment_id=OuterRef("pk"))
            .order_by("location_id").values("location_id")
        ),
    ).values_list("hardware_type_id", "gpus_per_container", "replica_count", "location_id_list")
    return [Commitment(hardware_type_id=hw, gpus_per_container=gpus, replica_count=replicas,
                       location_ids=list(locations or ())) for hw, gpus, replicas, locations in rows]


def deployment_count_for(*, tenant) -> int:
    return _visible(tenant=tenant).count()


def replicas_for(*, tenant, deployment_id, live: bool = False) -> QuerySet[Replica]:
    """Every incarnation of the deployment's replicas, ended ones included (history), by
    ordinal then generation; `live`: only those not yet in a terminal state."""
    pk = _visible_pk(tenant=tenant, deployment_id=deployment_id)
    queryset = Replica.objects.filter(deployment_id=pk)
    if live:
        queryset = queryset.exclude(state__in=TERMINAL_STATES)
    return (
        queryset
        .select_related("node", "node__location", "deployment")
        .only(
            "id", "uid", "deployment_id", "ordinal", "generation", "desired", "state", "reason", "host_port",
            "exit_code", "created_at", "placed_at", "booted_at", "started_at", "stopped_at", "ended_at",
            "drain_until",
            "node__id", "node__hostname", "node__public_address", "node__simulated",
            "node__location__slug", "deployment__traffic_port",
        )
        .prefetch_related(Prefetch("gpus", queryset=replica_gpus()))
        .annotate(**billed_interval_annotations())
        .order_by("ordinal", "generation")
    )


@dataclass(frozen=True)
class Page:
    items: list
    has_more: bool  # more lines (or events) lie beyond this page in the direction it was read
    # The byte budget ended the page before it held what was asked: continue from its last
    # line (after=) or, for a page read backwards (before= alone), from its first (before=).
    truncated: bool = False
    cost: int = 0  # what its lines cost against a budget (LINE_OVERHEAD_BYTES), for a budgeted read
