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
import time
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services.status import TERMINAL, deployment_refresh, replica_event
from nodes import link
from nodes.models import CpuSlot, Gpu, Node

log = logging.getLogger(__name__)


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


LOCATIONS = Deployment.locations.through._meta.db_table


def _rank_sql(unit_model, *, gpu: bool) -> str:
    """Nodes that can take one replica, best first: fewest of the deployment's unfinished
    replicas already there (spread), then fewest free units (best fit), then id.

    Raw SQL because the ORM spent about 2 ms of CPU building and compiling this query (two
    correlated counts, the location rule) for every placement: more than PostgreSQL spent
    running it, and a fifth of a placement (bench/scheduler.py)."""
    # A GPU is free when no replica holds it and its node says it is in service; a GPU node
    # takes GPU work only while its preflight says its GPUs can be passed through.
    in_service = " AND u.health = 'ok'" if gpu else ""
    passthrough = " AND n.gpu_passthrough" if gpu else ""
    return f"""
        SELECT id, hostname FROM (
            SELECT n.id, n.hostname,
                (SELECT count(*) FROM {unit_model._meta.db_table} u
                  WHERE u.node_id = n.id AND u.replica_id IS NULL{in_service}) AS free,
                (SELECT count(*) FROM {Replica._meta.db_table} r
                  WHERE r.node_id = n.id AND r.deployment_id = %(deployment)s
                    AND NOT (r.state = ANY(%(terminal)s))) AS mine
            FROM {Node._meta.db_table} n
            WHERE n.status = %(online)s AND n.last_heartbeat >= %(fresh)s AND n.hardware_type_id = %(hardware)s
              AND (%(node)s::bigint IS NULL OR n.id = %(node)s){passthrough}
              -- a deployment without locations may go anywhere
              AND (n.location_id IN (SELECT location_id FROM {LOCATIONS} WHERE deployment_id = %(deployment)s)
                   OR NOT EXISTS (SELECT FROM {LOCATIONS} WHERE deployment_id = %(deployment)s))
        ) n
        WHERE free >= %(units)s
        ORDER BY mine, free, id
        LIMIT %(limit)s
    """


RANK_SQL = {False: _rank_sql(Gpu, gpu=True), True: _rank_sql(CpuSlot, gpu=False)}


def _ranked(deployment: Deployment, *, cpu_only: bool, units: int, limit: int = 20) -> list[Node]:
    return list(Node.objects.raw(RANK_SQL[cpu_only], {
        "deployment": deployment.pk, "terminal": list(TERMINAL), "online": Node.Status.ONLINE,
        "fresh": timezone.now() - liveness_window(), "hardware": deployment.hardware_type_id,
        "node": deployment.node_id, "units": units, "limit": limit,
    }))


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
    if cpu_only:
        # Any slot will do: lock only the one taken, so other workers get the node's others.
        chosen = list(CpuSlot.objects.select_for_update(skip_locked=True)
                      .filter(node=node, replica__isnull=True).order_by("index").only("id")[:units])
    else:
        # The GPUs must be seen together to be grouped; the ones not taken stay locked until
        # this transaction ends, and other workers meanwhile skip to the next node.
        free = list(Gpu.objects.select_for_update(skip_locked=True)
                    .filter(node=node, replica__isnull=True, health=Gpu.Health.OK)
                    .order_by("index").only("id", "index", "numa_node", "nvlink_domain"))
        chosen = _pick_gpus(free, units)
    if len(chosen) < units:
        return False  # another worker holds some of them right now: try the next node
    (CpuSlot if cpu_only else Gpu).objects.filter(pk__in=[u.pk for u in chosen]).update(replica=replica)
    return True


def _shortage(deployment: Deployment, *, cpu_only: bool, units: int) -> str:
    hardware = deployment.hardware_type
    locations = list(deployment.locations.order_by("id").values_list("pk", "slug"))
    where = ", ".join(slug for _, slug in locations) or "any location"
    what = f"a free slot on {hardware.slug}" if cpu_only else f"{units} free {hardware.gpu_model} GPU(s) ({hardware.slug})"
    scope = Node.objects.filter(hardware_type=hardware)
    if locations:
        scope = scope.filter(location_id__in=[pk for pk, _ in locations])
    if deployment.node_id:
        pinned = Node.objects.filter(pk=deployment.node_id).values_list("hostname", "status").first()
        return f"pinned to node {pinned[0] if pinned else deployment.node_id} ({pinned[1] if pinned else 'gone'}), which has no room for {what}"
    total = scope.count()
    online = scope.filter(status=Node.Status.ONLINE)
    # A shortage an operator must fix (GPUs that cannot be passed through) says so; the reason
    # itself is for operators, in the admin.
    blocked = 0 if cpu_only else online.filter(gpu_passthrough=False).count()
    return (f"no capacity: no node in {where} has {what}; {online.count()} of {total} {hardware.slug} node(s) online, "
            f"none with enough free" + (f" ({blocked} of them cannot pass GPUs through to VMs)" if blocked else ""))


def place(replica_pk: int, *, placed_on: set[int] | None = None) -> bool | None:
    """One placement attempt in its own transaction. True: placed; False: no room (the reason
    says why); None: someone else holds the replica, its deployment or the units with room, or
    already handled it (schedule_pending retries what is still unplaced).

    The node's consumer is told once this commits, or, given `placed_on`, the node id is added
    there for the caller to tell in a batch."""
    with transaction.atomic():
        # The replica and its deployment together, both SKIP LOCKED. Everyone else locks the
        # deployment first, then its replicas (deployment_stop, agent reports, node_lost);
        # locking the replica here and then waiting for the deployment deadlocked against a
        # stop. A busy deployment (a stop, or another worker placing a sibling) is skipped
        # and retried at the end of the pass.
        replica = (
            Replica.objects.select_for_update(skip_locked=True, of=("self", "deployment"))
            .select_related("deployment__hardware_type")
            .filter(pk=replica_pk, node__isnull=True, state=Replica.State.PENDING, desired=Replica.Desired.RUN).first()
        )
        if replica is None:
            return None
        deployment = replica.deployment
        cpu_only, units = _units_needed(deployment)
        ranked = _ranked(deployment, cpu_only=cpu_only, units=units)
        for node in ranked:
            if _claim(replica, node, cpu_only=cpu_only, units=units):
                now = timezone.now()
                replica.node, replica.placed_at = node, now
                replica.reason = f"placed on {node.hostname}: waiting for its agent to start the VM"
                replica.save(update_fields=["node", "placed_at", "reason"])
                if placed_on is None:
                    link.notify_node(node.pk)
                else:
                    placed_on.add(node.pk)
                replica_event(replica, "replica.placed", node=node.hostname)
                deployment_refresh(deployment_id=deployment.pk)
                return True
        if ranked:
            # Those nodes had room when ranked, so other workers hold (or just took) their
            # units: contention, not a shortage. No "no capacity" reason; the pass retries.
            return None
        reason = _shortage(deployment, cpu_only=cpu_only, units=units)
        if replica.reason != reason:
            replica.reason = reason
            replica.save(update_fields=["reason"])
            deployment_refresh(deployment_id=deployment.pk)
        return False


# A pass tells each node it placed on at most this often. A node.sync makes the consumer
# recompute the node's whole desired set, so one covers every placement since the last; and
# each costs a channel-layer round trip (async_to_sync opens a fresh event loop and Redis
# connection per call) that cost more than the placement itself: 1,000 placements on a few
# hundred nodes were 1,000 of them.
NOTIFY_EVERY_S = 0.2


def _unplaced(*, limit: int, among: list[int] | None = None) -> list[int]:
    pending = Replica.objects.filter(node__isnull=True, state=Replica.State.PENDING, desired=Replica.Desired.RUN,
                                     deployment__deleted_at__isnull=True)
    if among is not None:
        pending = pending.filter(pk__in=among)
    return list(pending.order_by("created_at", "id").values_list("pk", flat=True)[:limit])


def schedule_pending(*, limit: int = 1000, rounds: int = 4) -> int:
    """Places what can be placed; returns how many. Oldest first; safe in many workers at once
    (each replica and each unit is claimed under SKIP LOCKED)."""
    pending = _unplaced(limit=limit)
    placed = 0
    to_tell: set[int] = set()
    told_at = time.monotonic()
    try:
        for round_ in range(rounds):
            skipped = []
            for pk in pending:
                result = place(pk, placed_on=to_tell)
                placed += result is True
                if result is None:
                    skipped.append(pk)
                if to_tell and time.monotonic() - told_at >= NOTIFY_EVERY_S:
                    _tell(to_tell)
                    told_at = time.monotonic()
            # Skipped because another worker held the replica, its deployment (placing a
            # sibling) or the only units with room. Each worker passes a deployment's siblings
            # once, so a sibling could otherwise be passed by every worker while another held
            # the deployment, and wait for the sweep. What is still unplaced gets another try
            # once the holders have committed.
            if not skipped or round_ == rounds - 1:
                break
            pending = _unplaced(limit=limit, among=skipped)
            if not pending:
                break
            time.sleep(0.02 * (round_ + 1))
    finally:
        _tell(to_tell)
    return placed


def _tell(node_ids: set[int]) -> None:
    for node_id in sorted(node_ids):
        link.notify_node(node_id)
    node_ids.clear()


def units_release(replica: Replica) -> bool:
    """Frees the GPUs / slot of an incarnation whose node confirmed its VM is gone."""
    freed = Gpu.objects.filter(replica=replica).update(replica=None)
    freed += CpuSlot.objects.filter(replica=replica).update(replica=None)
    return freed > 0
