"""The scheduler (DESIGN section 6): pending incarnations onto nodes, GPUs or CPU slots claimed
with SELECT ... FOR UPDATE SKIP LOCKED so two workers can never hand one unit to two replicas.

Filter: node online with a fresh heartbeat, the deployment's hardware type, its locations (if
any), its pinned node (if any), enough free units. Rank: fewest replicas of this deployment
already on the node (spread), then fewest free units left after placing (best fit, so whole
boards stay free for 8-GPU work), then id. GPUs are picked on one NUMA node (and NVLink
domain) when one has enough. No room: the replica stays `pending` with a reason naming the
hardware, the locations and what is short, and is retried by every kick and by the sweep.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from nodes import link
from nodes.models import CpuSlot, Gpu, Node

log = logging.getLogger(__name__)
TERMINAL = (Replica.State.STOPPED, Replica.State.FAILED, Replica.State.LOST)


def scheduler_kick() -> None:
    """Ask a worker to place pending replicas once this transaction commits. A broker that is
    away costs only latency: the periodic sweep places them anyway."""

    def send() -> None:
        from cloud.celery import app

        try:
            app.send_task("deployments.schedule_pending", ignore_result=True)
        except Exception:  # noqa: BLE001
            log.warning("could not queue a scheduling pass; the sweep will place the replicas", exc_info=True)

    transaction.on_commit(send)


def liveness_window() -> timedelta:
    return timedelta(seconds=getattr(settings, "NODE_LIVENESS_WINDOW_S", 30))


def _units_needed(deployment: Deployment) -> tuple[bool, int]:
    """(cpu_only, units): a CPU-only replica takes one slot; a GPU replica its GPUs."""
    if deployment.hardware_type.cpu_only:
        return True, 1
    return False, deployment.gpus_per_container


def _count(queryset) -> Coalesce:
    counted = queryset.order_by().values("node_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _candidates(deployment: Deployment, *, cpu_only: bool, units: int):
    fresh = timezone.now() - liveness_window()
    nodes = Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat__gte=fresh,
                                hardware_type_id=deployment.hardware_type_id)
    locations = [loc.pk for loc in deployment.locations.all()]
    if locations:
        nodes = nodes.filter(location_id__in=locations)
    if deployment.node_id:
        nodes = nodes.filter(pk=deployment.node_id)
    unit_model = CpuSlot if cpu_only else Gpu
    nodes = nodes.annotate(
        free=_count(unit_model.objects.filter(node_id=OuterRef("pk"), replica__isnull=True)),
        mine=_count(Replica.objects.filter(node_id=OuterRef("pk"), deployment_id=deployment.pk)
                    .exclude(state__in=TERMINAL)),
    )
    return nodes, locations


def _pick_gpus(free: list[Gpu], units: int) -> list[Gpu]:
    """The GPUs for one replica: within one NUMA node / NVLink domain when one has enough (the
    fullest such group that fits, to keep others whole), else any `units` of the node's."""
    groups: dict[tuple, list[Gpu]] = defaultdict(list)
    for gpu in free:
        groups[(gpu.numa_node, gpu.nvlink_domain)].append(gpu)
    fitting = [g for g in groups.values() if len(g) >= units]
    if fitting:
        best = min(fitting, key=lambda g: (len(g), g[0].index))
        return best[:units]
    return free[:units] if len(free) >= units else []


def _claim(replica: Replica, node: Node, *, cpu_only: bool, units: int) -> bool:
    if units == 0:
        return True
    model = CpuSlot if cpu_only else Gpu
    free = list(model.objects.select_for_update(skip_locked=True)
                .filter(node=node, replica__isnull=True).order_by("index"))
    chosen = free[:units] if cpu_only else _pick_gpus(free, units)
    if len(chosen) < units:
        return False  # another worker holds some of them right now: try the next node
    model.objects.filter(pk__in=[u.pk for u in chosen]).update(replica=replica)
    return True


def _shortage(deployment: Deployment, *, cpu_only: bool, units: int, locations: list[int]) -> str:
    hardware = deployment.hardware_type
    where = ", ".join(deployment.locations.values_list("slug", flat=True).order_by("id")) if locations else "any location"
    what = f"a free slot on {hardware.slug}" if cpu_only else f"{units} free {hardware.gpu_model} GPU(s) ({hardware.slug})"
    scope = Node.objects.filter(hardware_type=hardware)
    if locations:
        scope = scope.filter(location_id__in=locations)
    if deployment.node_id:
        pinned = Node.objects.filter(pk=deployment.node_id).values_list("hostname", "status").first()
        return f"pinned to node {pinned[0] if pinned else deployment.node_id} ({pinned[1] if pinned else 'gone'}), which has no room for {what}"
    total = scope.count()
    online = scope.filter(status=Node.Status.ONLINE).count()
    return f"no capacity: no node in {where} has {what}; {online} of {total} {hardware.slug} node(s) online, none with enough free"


def place(replica_pk: int) -> bool | None:
    """One placement attempt in its own transaction. True: placed; False: no room (the reason
    says why); None: someone else holds or already handled the replica."""
    with transaction.atomic():
        replica = (
            Replica.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("deployment__hardware_type")
            .filter(pk=replica_pk, node__isnull=True, state=Replica.State.PENDING, desired=Replica.Desired.RUN).first()
        )
        if replica is None:
            return None
        deployment = replica.deployment
        cpu_only, units = _units_needed(deployment)
        nodes, locations = _candidates(deployment, cpu_only=cpu_only, units=units)
        ranked = nodes.filter(free__gte=units).order_by("mine", "free", "id").select_related("hardware_type")[:20]
        for node in ranked:
            if _claim(replica, node, cpu_only=cpu_only, units=units):
                now = timezone.now()
                replica.node, replica.placed_at = node, now
                replica.reason = f"placed on {node.hostname}: waiting for its agent to start the VM"
                replica.save(update_fields=["node", "placed_at", "reason"])
                link.notify_node(node.pk)
                from cloud.deployments.services.status import deployment_refresh, replica_event

                replica_event(replica, "replica.placed", node=node.hostname)
                deployment_refresh(deployment_id=deployment.pk)
                return True
        reason = _shortage(deployment, cpu_only=cpu_only, units=units, locations=locations)
        if replica.reason != reason:
            replica.reason = reason
            replica.save(update_fields=["reason"])
            from cloud.deployments.services.status import deployment_refresh

            deployment_refresh(deployment_id=deployment.pk)
        return False


def schedule_pending(*, limit: int = 1000) -> int:
    """Places what can be placed; returns how many. Oldest first; safe in many workers at once
    (each replica and each unit is claimed under SKIP LOCKED)."""
    pending = list(
        Replica.objects.filter(node__isnull=True, state=Replica.State.PENDING, desired=Replica.Desired.RUN,
                               deployment__deleted_at__isnull=True)
        .order_by("created_at", "id").values_list("pk", flat=True)[:limit]
    )
    placed = 0
    for pk in pending:
        placed += bool(place(pk))
    return placed


def units_release(replica: Replica) -> bool:
    """Frees the GPUs / slot of an incarnation whose node confirmed its VM is gone."""
    freed = Gpu.objects.filter(replica=replica).update(replica=None)
    freed += CpuSlot.objects.filter(replica=replica).update(replica=None)
    return freed > 0
