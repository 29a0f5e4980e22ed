"""Reads about the fleet that customers may see: locations, hardware kinds and free capacity.

Nothing here is tenant-specific: capacity is a property of the fleet. Free capacity is computed
in a fixed number of queries whatever the size of the fleet (one for the hardware types, one
aggregate over online nodes), never one query per node or per GPU.
"""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from cloud.exceptions import NotFound
from nodes.models import Gpu, HardwareType, Location, Node

# -- read by billing and templates ----------------------------------------------------------------


def gpus_by_location() -> dict[int, tuple[int, int]]:
    """{location_id: (real GPUs, simulated GPUs)} registered now, whatever their state."""
    return {loc: (real, simulated) for loc, real, simulated in
            Gpu.objects.values("node__location_id").annotate(
                real=Count("pk", filter=Q(node__simulated=False)), simulated=Count("pk", filter=Q(node__simulated=True)))
            .values_list("node__location_id", "real", "simulated")}


# Replica states that hold a slot on their node (cpu-only kinds count replicas, not GPUs).
_FINISHED_REPLICA_STATES = ("stopped", "failed", "lost")


def locations_list() -> QuerySet[Location]:
    return Location.objects.order_by("id")


def hardware_types_list() -> QuerySet[HardwareType]:
    return HardwareType.objects.order_by("id")


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
    from cloud.deployments.models import Replica  # the deployments app imports nodes, not the reverse

    free_gpus = _count_subquery(Gpu.objects.filter(node_id=OuterRef("pk"), replica__isnull=True,
                                                   health=Gpu.Health.OK, node__gpu_passthrough=True))
    busy_slots = _count_subquery(
        Replica.objects.filter(node_id=OuterRef("pk")).exclude(state__in=_FINISHED_REPLICA_STATES)
    )
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


def fleet_summary() -> dict:
    """Operators' view of the fleet: nodes by status, GPUs and CPU slots total / free /
    allocated, each split into real and simulated (a simulated GPU is never counted as real)."""
    from nodes.models import CpuSlot

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
