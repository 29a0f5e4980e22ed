"""The scheduler (DESIGN section 6): pending incarnations onto nodes, GPUs or CPU slots claimed
with SELECT ... FOR UPDATE SKIP LOCKED so two workers can never hand one unit to two replicas.

Filter: node online with a fresh heartbeat, the deployment's hardware type, its locations (if
any), its pinned node (if any), enough free units. Rank: fewest replicas of this deployment
already on the node (spread), then fewest free units left after placing (best fit, so whole
boards stay free for 8-GPU work), then id. GPUs are picked on one NUMA node (and NVLink
domain) when one has enough. No room: the replica stays `pending` with a reason naming the
hardware, the locations and what is short, and is retried by every kick and by the sweep.

The nodes' tables are the nodes app's: it ranks them (`nodes.selectors.nodes_ranked`, told
where this deployment's replicas already are) and hands out units (`nodes.services.units_claim`,
inside the placement's transaction); this module owns the replica and its deployment.
"""

from __future__ import annotations

import logging
import time

from django.contrib.postgres.fields import ArrayField
from django.db import models, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services.gateways import routes_changed
from cloud.deployments.services import rolling
from cloud.deployments.services.status import deployment_refresh, replica_event
from cloud.deployments.services.volumes import volume_holders
from nodes import link
from nodes import selectors as node_selectors
from nodes import services as node_services
from protocol.vocabulary import ONLINE, TERMINAL_STATES
from volumes import services as volume_services

log = logging.getLogger(__name__)

def _units_needed(deployment: Deployment) -> tuple[bool, int]:
    """(cpu_only, units): a CPU-only replica takes one slot; a GPU replica its GPUs."""
    if deployment.hardware_type.cpu_only:
        return True, 1
    return False, deployment.gpus_per_container


LOCATIONS = Deployment.locations.through._meta.db_table
REPLICAS = Replica._meta.db_table
# What the ranking needs of the deployment, read with the replica's lock (no query of its own):
# its locations, and the node of each of its unfinished replicas (spread). Raw SQL for the
# reason the ranking is (nodes.selectors._rank_sql): the ORM's compile cost per placement.
_ARRAY = ArrayField(models.BigIntegerField())
_PLACEMENT_CONTEXT = {
    "location_ids": RawSQL(
        f"ARRAY(SELECT l.location_id FROM {LOCATIONS} l WHERE l.deployment_id = {REPLICAS}.deployment_id)",
        (), output_field=_ARRAY),
    "spread": RawSQL(
        f"ARRAY(SELECT s.node_id FROM {REPLICAS} s WHERE s.deployment_id = {REPLICAS}.deployment_id"
        " AND s.node_id IS NOT NULL AND NOT (s.state = ANY(%s)))",
        (list(TERMINAL_STATES),), output_field=_ARRAY),
}


def _shortage(deployment: Deployment, *, cpu_only: bool, units: int) -> str:
    hardware = deployment.hardware_type
    locations = list(deployment.locations.order_by("id").values_list("pk", "slug"))
    where = ", ".join(slug for _, slug in locations) or "any location"
    what = f"a free slot on {hardware.slug}" if cpu_only else f"{units} free {hardware.gpu_model} GPU(s) ({hardware.slug})"
    if deployment.node_id:
        pinned = node_selectors.pinned_node_state(deployment.node_id)
        return f"pinned to node {pinned[0] if pinned else deployment.node_id} ({pinned[1] if pinned else 'gone'}), which has no room for {what}"
    total, online, blocked = node_selectors.nodes_online_of(
        hardware=hardware, location_ids=[pk for pk, _ in locations], cpu_only=cpu_only)
    # Both reasons begin with one of models.SHORTAGE_PREFIXES (the route table's "no capacity").
    # A shortage an operator must fix (GPUs that cannot be passed through) says so; the reason
    # itself is for operators, in the admin.
    return (f"no capacity: no node in {where} has {what}; {online} of {total} {hardware.slug} node(s) online, "
            f"none with enough free" + (f" ({blocked} of them cannot pass GPUs through to VMs)" if blocked else ""))


# How a pending replica's reason begins while its volume's node cannot take it.
VOLUME_WAIT_PREFIX = "volume "


def _volume_block(replica: Replica, needs: volume_services.Needs) -> tuple[str, bool] | None:
    """(reason, unavailable) when the replica's volumes keep it from being placed now, else
    None. `unavailable`: the volume's node is away (the `volume.unavailable` event)."""
    deployment = replica.deployment
    if needs.problem:
        return f"{VOLUME_WAIT_PREFIX}placement impossible: {needs.problem}", False
    if needs.node_id is not None:
        volume = next(v for v in needs.volumes if v.node_id == needs.node_id)
        if deployment.node_id is not None and deployment.node_id != needs.node_id:
            return (f"{VOLUME_WAIT_PREFIX}{volume.name} is on another node than the one the deployment is pinned to",
                    False)
        host, status = node_selectors.pinned_node_state(needs.node_id) or (str(needs.node_id), "gone")
        if status != ONLINE:
            return (f"{VOLUME_WAIT_PREFIX}{volume.name} is on node {host}, which is {status}: waiting for it to be "
                    "online again (a volume's replicas run only on its node)"), True
    holders = volume_holders(volume_ids=[v.pk for v in needs.exclusive], exclude_pk=replica.pk)
    if holders:
        volume_id, holder = next(iter(holders.items()))
        name = next(v.name for v in needs.exclusive if str(v.pk) == volume_id)
        # Its predecessor stops (ordinal by ordinal) to hand the volume over; the VM's end kicks
        # the scheduler again.
        rolling.volume_hand_over(successor=replica, volume_name=name)
        return (f"{VOLUME_WAIT_PREFIX}{name} is read-write and still held by generation {holder.generation} of "
                f"ordinal {holder.ordinal}: waiting for its VM to end"), False
    # A read-only mount waits too while a VM still writes the volume (a deleted or re-attached
    # deployment's, stopping): QEMU locks an image it opens read-write against other openers
    # (the ro VM would fail to start, "Failed to get shared write lock"), and a guest must never
    # mount an ext4 another guest is changing.
    shared = [v for v in needs.volumes if all(v.pk != e.pk for e in needs.exclusive)]
    writers = volume_holders(volume_ids=[v.pk for v in shared], exclude_pk=replica.pk, writers_only=True)
    if writers:
        volume_id, holder = next(iter(writers.items()))
        name = next(v.name for v in shared if str(v.pk) == volume_id)
        return (f"{VOLUME_WAIT_PREFIX}{name} is still held read-write by generation {holder.generation} of "
                f"ordinal {holder.ordinal} of deployment {holder.deployment.name}: waiting for its VM to end"), False
    return None


def _wait(replica: Replica, reason: str, *, unavailable: bool = False) -> None:
    deployment = replica.deployment
    if replica.reason != reason:
        replica.reason = reason
        replica.save(update_fields=["reason"])
        if unavailable:  # once per new reason, not every pass
            replica_event(replica, "volume.unavailable", reason=reason)
        deployment_refresh(deployment_id=deployment.pk)
        routes_changed()


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
            .select_related("deployment__hardware_type").annotate(**_PLACEMENT_CONTEXT)
            .filter(pk=replica_pk, node__isnull=True, state=Replica.State.PENDING, desired=Replica.Desired.RUN).first()
        )
        if replica is None:
            return None
        deployment = replica.deployment
        cpu_only, units = _units_needed(deployment)
        needs = volume_services.placement_needs(deployment_id=deployment.pk, ordinal=replica.ordinal)
        node_id, location_ids = deployment.node_id, replica.location_ids
        if needs is not None:
            blocked = _volume_block(replica, needs)
            if blocked is not None:
                _wait(replica, blocked[0], unavailable=blocked[1])
                return False
            node_id = needs.node_id or node_id
            if needs.location_id is not None:
                location_ids = [needs.location_id]
        ranked = node_selectors.nodes_ranked(
            hardware_type_id=deployment.hardware_type_id, location_ids=location_ids, node_id=node_id,
            cpu_only=cpu_only, units=units, spread=replica.spread)
        if needs is not None and needs.new_gib:
            room = volume_services.placement_room(needs=needs, node_ids=[n.pk for n in ranked])
            if ranked and not any(room.values()):
                _wait(replica, f"{VOLUME_WAIT_PREFIX}space: no node with room for the replica has {needs.new_gib} GiB "
                               "free for its new volumes")
                return False
            ranked = [n for n in ranked if room[n.pk]]
        for node in ranked:
            # Claimed inside this transaction: a placement that fails later gives them back.
            saved = transaction.savepoint()
            claimed = node_services.units_claim(node.pk, replica.pk, cpu_only=cpu_only, units=units) is not None
            if claimed and needs is not None and not volume_services.placement_commit(
                    needs=needs, deployment=deployment, ordinal=replica.ordinal, node=node):
                claimed = False  # another placement took the volume space meanwhile
            if not claimed:
                transaction.savepoint_rollback(saved)
                continue
            transaction.savepoint_commit(saved)
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
        if needs is not None and needs.node_id is not None:
            volume = next(v for v in needs.volumes if v.node_id == needs.node_id)
            host = node_selectors.node_hostname(needs.node_id)
            reason = (f"{VOLUME_WAIT_PREFIX}{volume.name} is on node {host}, which has no room for this replica now "
                      f"({reason})")
        # A rolling restart's successor with no room: its predecessor may make room for it.
        changed = rolling.room_make(successor=replica)
        if replica.reason != reason:
            replica.reason = reason
            replica.save(update_fields=["reason"])
            changed = True
        if changed:
            deployment_refresh(deployment_id=deployment.pk)
            routes_changed()  # its route's 503 says "no capacity" now
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
    return node_services.units_free(replica.pk) > 0
