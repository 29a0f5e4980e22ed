"""Handing a node's GPUs and CPU slots to replicas and taking them back: the scheduler's writes
to the nodes' tables (`nodes.services` exports them; the scheduler calls them inside its own
transaction, so a claim commits or rolls back with the placement it belongs to).

Units are claimed with SELECT ... FOR UPDATE SKIP LOCKED so two workers can never hand one unit
to two replicas: a worker that finds some of a node's units held by another moves on.
"""

from __future__ import annotations

from collections import defaultdict

from nodes.models import CpuSlot, Gpu


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


def units_claim(node_id: int, replica_id: int, *, cpu_only: bool, units: int) -> list[int] | None:
    """Gives `units` free GPUs (or CPU slots) of the node to the replica and returns their ids,
    or None when another worker holds some of them right now (the caller tries another node).
    Call it inside a transaction: the units it looked at stay locked until that ends."""
    if units == 0:
        return []
    if cpu_only:
        # Any slot will do: lock only the one taken, so other workers get the node's others.
        chosen = list(CpuSlot.objects.select_for_update(skip_locked=True)
                      .filter(node_id=node_id, replica__isnull=True).order_by("index").only("id")[:units])
    else:
        # The GPUs must be seen together to be grouped; the ones not taken stay locked until
        # this transaction ends, and other workers meanwhile skip to the next node.
        free = list(Gpu.objects.select_for_update(skip_locked=True)
                    .filter(node_id=node_id, replica__isnull=True, health=Gpu.Health.OK)
                    .order_by("index").only("id", "index", "numa_node", "nvlink_domain"))
        chosen = _pick_gpus(free, units)
    if len(chosen) < units:
        return None
    ids = [u.pk for u in chosen]
    (CpuSlot if cpu_only else Gpu).objects.filter(pk__in=ids).update(replica_id=replica_id)
    return ids


def units_free(replica_id: int) -> int:
    """Frees the GPUs and slots a replica holds (its node confirmed its VM is gone); returns how
    many."""
    freed = Gpu.objects.filter(replica_id=replica_id).update(replica=None)
    return freed + CpuSlot.objects.filter(replica_id=replica_id).update(replica=None)
