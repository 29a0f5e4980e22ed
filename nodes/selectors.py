"""Reads about the fleet that customers may see: locations, hardware kinds and free capacity.

Nothing here is tenant-specific: capacity is a property of the fleet. Free capacity is computed
in a fixed number of queries whatever the size of the fleet (one for the hardware types, one
aggregate over online nodes), never one query per node or per GPU.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from cloud.exceptions import NotFound
from nodes import link
from nodes.models import CpuSlot, Gpu, HardwareType, Location, Node

# -- read by billing and templates ----------------------------------------------------------------


def gpus_by_location() -> dict[int, tuple[int, int]]:
    """{location_id: (real GPUs, simulated GPUs)} registered now, whatever their state."""
    return {loc: (real, simulated) for loc, real, simulated in
            Gpu.objects.values("node__location_id").annotate(
                real=Count("pk", filter=Q(node__simulated=False)), simulated=Count("pk", filter=Q(node__simulated=True)))
            .values_list("node__location_id", "real", "simulated")}


def locations_list() -> QuerySet[Location]:
    return Location.objects.order_by("id")


def locations_by_id(ids) -> dict[int, Location]:
    return {loc.id: loc for loc in Location.objects.filter(pk__in=ids)}


def hardware_types_list() -> QuerySet[HardwareType]:
    return HardwareType.objects.order_by("id")


def hardware_type_get(hardware_type_id) -> HardwareType | None:
    return HardwareType.objects.filter(pk=hardware_type_id).first()


def joined_by_nvswitch(hardware: HardwareType) -> bool:
    """A board whose GPUs are joined by NVSwitches: a VM gets one GPU or all of them."""
    return hardware.interconnect == HardwareType.Interconnect.NVSWITCH


# -- single nodes --------------------------------------------------------------------------------


def node_get(node_id: int) -> Node:
    return Node.objects.get(pk=node_id)


def node_for_pinning(*, node_id) -> Node | None:
    """A node a customer may pin to: any registered node (placement decides later whether it
    is online); only its hardware type and location are checked at create."""
    return Node.objects.filter(pk=node_id).only("id", "hardware_type_id", "location_id", "status").first()


def node_hostname(node_id: int) -> str | None:
    return Node.objects.filter(pk=node_id).values_list("hostname", flat=True).first()


def free_volume_gib(*, node_ids) -> dict[int, float]:
    """{node id: GiB its agent last said are free for volumes} of those of these nodes whose
    agent keeps volumes."""
    return dict(Node.objects.filter(pk__in=list(node_ids), free_volume_gib__isnull=False)
                .values_list("pk", "free_volume_gib"))


def public_addresses(node_ids) -> dict[int, str]:
    """{node id: the address its published ports answer on} for those of these nodes that have one."""
    return dict(Node.objects.filter(pk__in=node_ids, public_address__isnull=False).values_list("pk", "public_address"))


def nodes_draining() -> QuerySet[Node]:
    return Node.objects.filter(status=Node.Status.DRAINING)


# -- GPUs as replicas hold them ------------------------------------------------------------------


def replica_gpus() -> QuerySet[Gpu]:
    """GPU rows shaped for a replica's API representation (the deployments app prefetches
    them as each replica's `gpus`)."""
    return Gpu.objects.only("id", "replica_id", "index", "uuid", "model", "pci_bdf", "numa_node", "nvlink_domain")


def gpu_bdfs_by_replica(replicas) -> dict[int, list[str]]:
    """{replica id: its GPUs' PCI addresses, by index} for these replicas (ids or rows)."""
    bdfs: dict[int, list[str]] = {}
    for replica_pk, bdf in Gpu.objects.filter(replica__in=replicas).order_by("index").values_list("replica_id", "pci_bdf"):
        bdfs.setdefault(replica_pk, []).append(bdf)
    return bdfs


def _count_subquery(queryset) -> Coalesce:
    counted = queryset.order_by().values("node_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _largest_allowed(allowed: list[int], free: int) -> int:
    fitting = [count for count in allowed if count <= free]
    return max(fitting) if fitting else 0


def capacity_by_hardware() -> dict[int, list[dict]]:
    """{hardware_type_id: [availability row, ...]} for online nodes, one row per
    (location, simulated) pair so simulated capacity is never mixed into real capacity.

    A row: location_id, location (slug), simulated, nodes_online, gpus_free (for a cpu-only
    kind: free replica slots), max_gpus_per_replica_now (the largest allowed count that fits on
    one node now: a replica never spans nodes).
    """
    free_gpus = _count_subquery(Gpu.objects.filter(node_id=OuterRef("pk"), replica__isnull=True,
                                                   health=Gpu.Health.OK, node__gpu_passthrough=True))
    # Replicas that hold a slot on their node (cpu-only kinds count replicas, not GPUs); the
    # deployments app hands them over through the link (it imports nodes, not the reverse).
    busy_slots = _count_subquery(link.sink().unfinished_replicas().filter(node_id=OuterRef("pk")))
    nodes = (
        Node.objects.filter(status=Node.Status.ONLINE)
        .annotate(free_gpus=free_gpus, busy_slots=busy_slots)
        .values(
            "hardware_type_id", "hardware_type__cpu_only", "hardware_type__gpus_per_node",
            "hardware_type__allowed_gpu_counts", "location_id", "location__slug", "simulated",
            "free_gpus", "busy_slots",
        )
        .order_by("hardware_type_id", "location_id", "simulated")
    )
    rows: dict[tuple, dict] = {}
    for node in nodes:
        key = (node["hardware_type_id"], node["location_id"], node["simulated"])
        if node["hardware_type__cpu_only"]:
            free = max(node["hardware_type__gpus_per_node"] - node["busy_slots"], 0)
            fits = 0
        else:
            free = node["free_gpus"]
            fits = _largest_allowed(node["hardware_type__allowed_gpu_counts"], free)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "location_id": node["location_id"], "location": node["location__slug"],
                "simulated": node["simulated"], "nodes_online": 0, "gpus_free": 0, "max_gpus_per_replica_now": 0,
            }
        row["nodes_online"] += 1
        row["gpus_free"] += free
        row["max_gpus_per_replica_now"] = max(row["max_gpus_per_replica_now"], fits)
    by_hardware: dict[int, list[dict]] = defaultdict(list)
    for (hardware_type_id, _, _), row in rows.items():
        by_hardware[hardware_type_id].append(row)
    return by_hardware


# -- room for replicas: the scheduler and estimates ---------------------------------------------


def liveness_window() -> timedelta:
    """How recent a node's heartbeat must be for anything to be placed on it."""
    return timedelta(seconds=getattr(settings, "NODE_LIVENESS_WINDOW_S", 30))


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
                cardinality(array_positions(%(spread)s::bigint[], n.id)) AS mine
            FROM {Node._meta.db_table} n
            WHERE n.status = %(online)s AND n.last_heartbeat >= %(fresh)s AND n.hardware_type_id = %(hardware)s
              AND (%(node)s::bigint IS NULL OR n.id = %(node)s){passthrough}
              -- a deployment without locations may go anywhere
              AND (cardinality(%(locations)s::bigint[]) = 0 OR n.location_id = ANY(%(locations)s::bigint[]))
        ) n
        WHERE free >= %(units)s
        ORDER BY mine, free, id
        LIMIT %(limit)s
    """


RANK_SQL = {False: _rank_sql(Gpu, gpu=True), True: _rank_sql(CpuSlot, gpu=False)}


def nodes_ranked(*, hardware_type_id: int, location_ids: list[int], node_id: int | None, cpu_only: bool, units: int,
                 spread: list[int], limit: int = 20) -> list[Node]:
    """The nodes one replica could go to now, best first (see `_rank_sql`). `spread` names the
    node of each of the deployment's unfinished replicas already placed, once per replica
    (anti-affinity); `location_ids` empty means anywhere; `node_id` pins."""
    return list(Node.objects.raw(RANK_SQL[cpu_only], {
        "spread": list(spread), "locations": list(location_ids), "online": Node.Status.ONLINE,
        "fresh": timezone.now() - liveness_window(), "hardware": hardware_type_id,
        "node": node_id, "units": units, "limit": limit,
    }))


def room_by_location(*, hardware: HardwareType, units: int, location_ids: list[int], node_id: int | None,
                     now: datetime) -> list[tuple[int, str, int]]:
    """(location id, slug, free units) of each node the scheduler would consider now (online,
    heard from within the liveness window) with at least `units` free."""
    nodes = Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat__gte=now - liveness_window(),
                                hardware_type=hardware)
    if location_ids:
        nodes = nodes.filter(location__in=location_ids)
    if node_id is not None:
        nodes = nodes.filter(pk=node_id)
    unit_model = CpuSlot if hardware.cpu_only else Gpu
    free = _count_subquery(unit_model.objects.filter(node_id=OuterRef("pk"), replica__isnull=True))
    return list(nodes.annotate(free=free).filter(free__gte=units).order_by("location_id")
                .values_list("location_id", "location__slug", "free"))


def pinned_node_state(node_id: int) -> tuple[str, str] | None:
    """(hostname, status) of a node a deployment is pinned to, or None when it is gone."""
    return Node.objects.filter(pk=node_id).values_list("hostname", "status").first()


def nodes_online_of(*, hardware: HardwareType, location_ids: list[int], cpu_only: bool) -> tuple[int, int, int]:
    """(nodes, online, online but unable to pass GPUs through) of this hardware type in these
    locations (all of them when empty): why a replica found no room."""
    scope = Node.objects.filter(hardware_type=hardware)
    if location_ids:
        scope = scope.filter(location_id__in=location_ids)
    total = scope.count()
    online = scope.filter(status=Node.Status.ONLINE)
    blocked = 0 if cpu_only else online.filter(gpu_passthrough=False).count()
    return total, online.count(), blocked


def fleet_summary() -> dict:
    """Operators' view of the fleet: nodes by status, GPUs and CPU slots total / free /
    allocated, each split into real and simulated (a simulated GPU is never counted as real)."""
    nodes: dict[str, dict[str, int]] = {"real": defaultdict(int), "simulated": defaultdict(int)}
    for status, simulated, n in Node.objects.values_list("status", "simulated").annotate(n=Count("pk")).order_by():
        nodes["simulated" if simulated else "real"][status] += n

    def units(model) -> dict:
        out = {}
        for key, simulated in (("real", False), ("simulated", True)):
            rows = model.objects.filter(node__simulated=simulated)
            total = rows.count()
            free = rows.filter(replica__isnull=True).count()
            out[key] = {"total": total, "free": free, "allocated": total - free}
        return out

    return {"nodes": {k: dict(v) for k, v in nodes.items()}, "gpus": units(Gpu), "cpu_slots": units(CpuSlot)}


# -- VFIO, as the node last reported it (operators) ----------------------------------------------


def _reported(node_id: int) -> Node:
    node = Node.objects.filter(pk=node_id).only("id", "hostname", "simulated", "gpu_passthrough",
                                                  "gpu_passthrough_reason", "inventory").first()
    if node is None:
        raise NotFound(f"No node {node_id}.")
    return node


def node_vfio(*, node_id: int) -> dict:
    """The node's IOMMU groups with their devices, drivers and viability, and its preflight, as
    its agent last reported them (the plane never reads a node's sysfs itself)."""
    node = _reported(node_id)
    inv = node.inventory or {}
    vfio = inv.get("vfio") or {}
    return {
        "node": {"id": node.pk, "hostname": node.hostname, "simulated": node.simulated},
        "reported_at": inv.get("reported_at"), "iommu": bool(vfio.get("iommu")), "groups": vfio.get("groups", []),
        "passthrough": node.gpu_passthrough, "reason": node.gpu_passthrough_reason,
        "preflight": inv.get("preflight") or {},
    }


def vfio_validate(*, node_id: int, bdfs: list[str]) -> dict:
    """Would these GPUs go into one VM together, by the node's last report? The devices that
    would be passed (each GPU's group, and every NVSwitch for a whole board) and every problem.
    The agent checks again, live, when it binds them."""
    node = _reported(node_id)
    inv = node.inventory or {}
    gpus = {g.get("pci_bdf"): g for g in inv.get("gpus", []) if isinstance(g, dict)}
    switches = [s for s in inv.get("nvswitches", []) if isinstance(s, dict)]
    groups = {g.get("group"): g for g in (inv.get("vfio") or {}).get("groups", []) if isinstance(g, dict)}
    held = dict(Gpu.objects.filter(node_id=node_id, pci_bdf__in=bdfs, replica__isnull=False)
                .values_list("pci_bdf", "replica__uid"))
    problems, devices = [], []
    if not node.gpu_passthrough:
        problems.append(f"the node cannot pass GPUs through: {node.gpu_passthrough_reason}")
    if len(set(bdfs)) != len(bdfs):
        problems.append("a GPU is listed twice")
    for bdf in bdfs:
        gpu = gpus.get(bdf)
        if gpu is None:
            problems.append(f"{bdf}: no GPU at this address on the node")
            continue
        if gpu.get("usable") is False:
            problems.append(f"{bdf}: {gpu.get('reason') or 'unusable'}")
        if bdf in held:
            problems.append(f"{bdf}: held by replica {held[bdf]}")
        members = groups.get(gpu.get("iommu_group"), {}).get("devices", [])
        devices += [{"bdf": m["bdf"], "kind": m["kind"], "group": gpu.get("iommu_group")}
                    for m in members if m.get("passed")] or [{"bdf": bdf, "kind": "gpu", "group": gpu.get("iommu_group")}]
    if switches and 1 < len(bdfs) < len(gpus):
        problems.append(f"{len(bdfs)} of the board's {len(gpus)} GPUs: on an NVSwitch board a VM gets one GPU or all "
                        "of them with every NVSwitch (2- and 4-GPU partitions need Fabric Manager's shared-NVSwitch "
                        "mode, later work)")
    elif switches and len(bdfs) == len(gpus) > 1:
        for switch in switches:
            devices.append({"bdf": switch.get("pci_bdf"), "kind": "nvswitch", "group": switch.get("iommu_group")})
            if not (switch.get("passthrough") or {}).get("viable", False):
                problems.append(f"NVSwitch {switch.get('pci_bdf')}: {(switch.get('passthrough') or {}).get('reason')}")
    return {"valid": not problems, "devices": devices, "problems": problems, "reported_at": inv.get("reported_at")}
