"""What a node says it has: its inventory, its GPUs and CPU slots, and the GPUs' health.

Written only from a join, a hello and heartbeats (`nodes/services.py` calls these), and only
for the node that said it: an inventory naming another node's GPU is refused whole.
"""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from nodes import link
from nodes.models import CpuSlot, Gpu, Node
from protocol.vocabulary import is_pci_address
from protocol.wire import Inventory


class InventoryRefused(Exception):
    """An inventory that names a GPU another node holds, or one GPU UUID twice: none of it is
    applied. The message is what the agent is told: the UUIDs it sent, never which node holds
    them (a lying node learns nothing about the fleet); `for_operators` and `detail`, which do
    name that node, go into the operators' node event."""

    def __init__(self, message: str, *, node_id: int, for_operators: str, detail: dict):
        super().__init__(message)
        self.node_id, self.for_operators, self.detail = node_id, for_operators, detail



def inventory_apply(node: Node, inventory: Inventory) -> None:
    node.agent_version = inventory.agent_version[:50]
    node.cpus = max(inventory.cpus, 0)
    node.memory_mib = max(inventory.memory_mib, 0)
    node.disk_gib = max(inventory.disk_gib, 0)
    node.accelerator = inventory.accelerator[:10]
    node.simulated = inventory.simulated
    node.inventory = {
        "hostname": inventory.hostname[:253], "cpus": inventory.cpus, "memory_mib": inventory.memory_mib,
        "disk_gib": inventory.disk_gib, "accelerator": inventory.accelerator, "simulated": inventory.simulated,
        "simulated_board": inventory.simulated_board, "gpus": inventory.gpus, "nvswitches": inventory.nvswitches,
        "host": inventory.host, "vfio": inventory.vfio, "preflight": inventory.preflight, "nvidia": inventory.nvidia,
        "gpu_kit": inventory.gpu_kit, "reported_at": timezone.now().isoformat(),
    }
    preflight = inventory.preflight if isinstance(inventory.preflight, dict) else {}
    if node.hardware_type.cpu_only:
        node.gpu_passthrough, node.gpu_passthrough_reason = False, ""
    elif "passthrough" in preflight:
        node.gpu_passthrough = preflight.get("passthrough") is True
        node.gpu_passthrough_reason = "" if node.gpu_passthrough else str(preflight.get("reason") or "")[:500]
    else:
        # An agent from before preflight: no word either way, so nothing changes.
        pass


def _gpu_row(entry: object) -> dict | None:
    """The Gpu columns an inventory entry gives, or None for an entry that is not one."""
    if not isinstance(entry, dict):
        return None
    bdf, uuid, index = entry.get("pci_bdf"), entry.get("uuid"), entry.get("index")
    if not (is_pci_address(bdf) and isinstance(uuid, str) and 0 < len(uuid) <= 64
            and isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 64):
        return None

    def number(key: str, default: int) -> int:
        value = entry.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    nvlink = entry.get("nvlink") if isinstance(entry.get("nvlink"), dict) else {}
    usable = entry.get("usable", True) is not False
    group = entry.get("iommu_group")
    return {
        "index": index, "uuid": uuid, "model": str(entry.get("name") or "")[:100],
        "memory_mib": max(number("memory_mib", 0), 0), "numa_node": max(number("numa_node", 0), -1),
        "nvlink_domain": str(nvlink.get("domain") or "")[:64],
        "iommu_group": group if isinstance(group, int) and not isinstance(group, bool) and group >= 0 else None,
        "health": Gpu.Health.OK if usable else Gpu.Health.OUT,
        "health_reason": "" if usable else str(entry.get("reason") or "reported unusable by its node")[:500],
    }


def gpus_sync(*, node: Node, gpus: list) -> None:
    """The node's Gpu rows follow its inventory, matched by PCI address (stable across bindings,
    where a UUID the agent had to derive may later become the real one). A GPU the node no
    longer reports is deleted while free, or taken out of service while a replica holds it
    (its row goes once the replica lets go). Rows of cpu_only nodes are never made. Only this
    node's rows are ever read for change: a GPU another node holds refuses the whole inventory."""
    if node.hardware_type.cpu_only:
        return
    wanted = {}
    for entry in gpus if isinstance(gpus, list) else []:
        row = _gpu_row(entry)
        if row is not None:
            wanted[entry["pci_bdf"]] = row
    _refuse_foreign_gpus(node, wanted)
    existing = {g.pci_bdf: g for g in Gpu.objects.select_for_update().filter(node=node)}
    for bdf, gpu in existing.items():
        if bdf not in wanted:
            if gpu.replica_id is None:
                gpu.delete()
            elif gpu.health != Gpu.Health.OUT:
                gpu.health, gpu.health_reason = Gpu.Health.OUT, "no longer in its node's inventory"
                gpu.save(update_fields=["health", "health_reason"])
    # (node, index) and uuid are unique: rows whose index or uuid moves step aside first.
    moving = [existing[b] for b, row in wanted.items()
              if b in existing and (existing[b].index, existing[b].uuid) != (row["index"], row["uuid"])]
    for gpu in moving:
        Gpu.objects.filter(pk=gpu.pk).update(index=1000 + gpu.index, uuid=f"moving-{gpu.pk}")
    for bdf, row in wanted.items():
        gpu = existing.get(bdf)
        if gpu is None:
            Gpu.objects.create(node=node, pci_bdf=bdf, **row)
        elif gpu in moving or any(getattr(gpu, k) != v for k, v in row.items()):
            Gpu.objects.filter(pk=gpu.pk).update(**row)


def _refuse_foreign_gpus(node: Node, wanted: dict[str, dict]) -> None:
    """A GPU UUID names one physical GPU, and a node reports only its own: an inventory naming a
    UUID another node's row holds (a cloned host, a card moved without its old node dropping it,
    or a node lying) is refused whole, before anything is written, so it can never delete or
    take over the other node's rows, free or held by a replica (issue 23). The same UUID at two
    PCI addresses of one inventory is refused too (the unique index would make it a crash)."""
    counts = Counter(row["uuid"] for row in wanted.values())
    duplicated = sorted(uuid for uuid, n in counts.items() if n > 1)
    claimed = list(Gpu.objects.filter(uuid__in=list(counts)).exclude(node=node).order_by("uuid")
                   .values("uuid", "node_id", "node__hostname"))
    if not duplicated and not claimed:
        return

    def listed(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")

    told, logged = [], []
    if claimed:
        told.append(f"GPU(s) registered to another node: {listed([c['uuid'] for c in claimed])}. A node reports "
                    "only its own GPUs; if a card moved, its old node must drop it first")
        holders = [f"{c['uuid']} (node {c['node_id']}, {c['node__hostname']})" for c in claimed]
        logged.append(f"GPU(s) registered to another node: {listed(holders)}; "
                      "if a card really moved, let its old node's next hello drop it or delete that node")
    if duplicated:
        twice = f"GPU UUID(s) reported twice: {listed(duplicated)}"
        told.append(twice)
        logged.append(twice)
    raise InventoryRefused(
        f"inventory refused, nothing applied: {'; '.join(told)}",
        node_id=node.pk,
        for_operators=f"node {node.hostname} sent an inventory that was refused, nothing applied: {'; '.join(logged)}",
        detail={"claimed_elsewhere": [{"uuid": c["uuid"], "node_id": c["node_id"], "hostname": c["node__hostname"]}
                                      for c in claimed],
                "duplicated": duplicated},
    )


def gpus_health(*, node_id: int, health: list) -> int:
    """A heartbeat's per-GPU verdict; returns how many rows changed (one query when none did)."""
    verdict = {}
    for entry in health if isinstance(health, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("pci_bdf"), str):
            usable = entry.get("usable", True) is not False
            verdict[entry["pci_bdf"]] = (Gpu.Health.OK if usable else Gpu.Health.OUT,
                                         "" if usable else str(entry.get("reason") or "reported unusable")[:500])
    changed = 0
    for pk, bdf, health_now, reason in Gpu.objects.filter(node_id=node_id, pci_bdf__in=verdict).values_list(
            "pk", "pci_bdf", "health", "health_reason"):
        if (health_now, reason) != verdict[bdf]:
            changed += Gpu.objects.filter(pk=pk).update(health=verdict[bdf][0], health_reason=verdict[bdf][1])
    if changed:
        link.fleet_sweep_kick()  # a GPU back in service can take a pending replica
    return changed


def slots_sync(*, node: Node) -> None:
    """A cpu_only node has one CpuSlot row per slot its hardware type offers; extra rows are
    removed only while free (a slot in use disappears once its replica is gone)."""
    if not node.hardware_type.cpu_only:
        return
    wanted = node.hardware_type.gpus_per_node
    have = set(CpuSlot.objects.filter(node=node).values_list("index", flat=True))
    CpuSlot.objects.bulk_create([CpuSlot(node=node, index=i) for i in range(wanted) if i not in have])
    CpuSlot.objects.filter(node=node, index__gte=wanted, replica__isnull=True).delete()
