"""The GPUs and NVSwitches of this host as the inventory reports them: sysfs says what is there
(vendor 0x10de, class 0x03xx GPUs and 0x0680 NVSwitches, their NUMA nodes, IOMMU groups and
drivers); NVML, where the NVIDIA driver holds a GPU, says exactly what it is; the driver's /proc
text, then what the agent remembered, then the device-id table fill in for GPUs bound to
vfio-pci. Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from typing import Any

from nodes.agent.gpu.models import NVSWITCH_MODELS, model_for
from nodes.agent.gpu.nvml import NvmlSnapshot
from nodes.agent.sysfs import Sysfs
from nodes.agent.vfio import board_gpus, group_viability, holders

__all__ = ["HARDWARE_XIDS", "describe", "driver_version", "gpu_information", "kernel_xids"]

# XIDs that mean the hardware is at fault (NVIDIA's XID catalogue); the others (13, 31, 43, 45,
# ...) are a program's own faults and say nothing about the GPU the next tenant gets.
HARDWARE_XIDS = {
    48: "double-bit ECC error", 61: "internal micro-controller breakpoint", 62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping", 64: "ECC page retirement or row remapping failure",
    68: "video processor exception", 69: "graphics engine class error", 74: "NVLink error",
    79: "the GPU has fallen off the bus", 92: "high single-bit ECC error rate", 94: "contained ECC error",
    95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
}
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})\): (\d+)")
_DRIVER = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)")


def read_kmsg(sysfs: Sysfs) -> str:
    """The kernel log as /dev/kmsg holds it now (one record per read; non-blocking, so the
    read ends where the log does). "" if it cannot be read."""
    try:
        fd = os.open(sysfs.dev("kmsg"), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten while reading: skip ahead
                    continue
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def kernel_xids(sysfs: Sysfs) -> dict[str, list[int]]:
    """Slot (domain:bus:device) -> the XIDs the NVIDIA driver logged for it since boot."""
    out: dict[str, list[int]] = {}
    for match in _XID.finditer(read_kmsg(sysfs)):
        out.setdefault(match.group(1).lower(), []).append(int(match.group(2)))
    return out


def gpu_information(sysfs: Sysfs, bdf: str) -> dict[str, str]:
    """The NVIDIA driver's /proc text for a GPU it holds ({} for one it does not)."""
    out = {}
    for line in (sysfs.read(sysfs.proc("driver", "nvidia", "gpus", bdf, "information")) or "").splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def driver_version(sysfs: Sysfs) -> str | None:
    match = _DRIVER.search(sysfs.read(sysfs.proc("driver", "nvidia", "version")) or "")
    return match.group(1) if match else None


def derived_uuid(hostname: str, bdf: str) -> str:
    """A stable stand-in for a GPU whose UUID nothing here can tell (bound to vfio-pci since
    boot, never seen by the driver): unique per host and slot, never an NVIDIA UUID."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{bdf}.{hostname}.gantry')}"


def describe(sysfs: Sysfs, *, snapshot: NvmlSnapshot | None, known: dict[str, dict], hostname: str,
             faults: dict[str, str], claimed: dict[str, str], supported: dict[int, bool] | None) -> tuple[list, list]:
    """(gpus, nvswitches) as inventory dicts. `known`: what earlier inventories learnt per BDF
    (uuid, name, memory); `faults`: BDF -> why the agent took it out of service (a failed
    reset); `claimed`: BDF -> the VM holding it; `supported`: device id -> whether the GPU
    kit's driver supports it (None: no kit)."""
    gpus, switches = board_gpus(sysfs)
    nvml = {g.bdf: g for g in snapshot.gpus} if snapshot else {}
    switch_bdfs = {s.bdf for s in switches}
    board = f"nvswitch:{switches[0].bdf}" if switches else ""
    xids = kernel_xids(sysfs)
    free = [g for g in gpus if g.bdf not in claimed]
    busy: dict[str | None, list[str]] = {}
    for bdf, reason in holders(sysfs, free):
        busy.setdefault(bdf, []).append(reason)
    out_gpus: list[dict[str, Any]] = []
    for index, dev in enumerate(gpus):
        n = nvml.get(dev.bdf)
        info = gpu_information(sysfs, dev.bdf)
        model = model_for(dev.device)
        remembered = known.get(dev.bdf, {})
        if n is not None:
            gpu_uuid, uuid_source = n.uuid, "nvml"
        elif info.get("GPU UUID"):
            gpu_uuid, uuid_source = info["GPU UUID"], "driver"
        elif remembered.get("uuid"):
            gpu_uuid, uuid_source = remembered["uuid"], "remembered"
        else:
            gpu_uuid, uuid_source = derived_uuid(hostname, dev.bdf), "derived"
        name = (n.name if n else None) or info.get("Model") or remembered.get("name") or (
            model.name if model else f"NVIDIA GPU 0x{dev.device:04x}")
        if n is not None:
            memory, memory_source = n.memory_mib, "nvml"
        elif remembered.get("memory_mib"):
            memory, memory_source = remembered["memory_mib"], "remembered"
        else:
            memory, memory_source = (model.memory_mib, "model") if model else (0, "unknown")
        if n is not None and n.nvlink_remote:
            peers = sorted(set(n.nvlink_remote))
            domain = board if set(peers) & switch_bdfs else "nvlink:" + ",".join(sorted({dev.bdf, *peers}))[:56]
        elif model is not None and model.form == "sxm" and switches:
            peers, domain = sorted(switch_bdfs), board
        else:
            peers, domain = [], ""
        problems = []
        for xid in sorted(set(xids.get(dev.slot, []))):
            if xid in HARDWARE_XIDS:
                problems.append(f"XID {xid} ({HARDWARE_XIDS[xid]}) in the kernel log")
        if n is not None and n.ecc_uncorrected:
            problems.append(f"{n.ecc_uncorrected} uncorrectable ECC errors since the driver loaded")
        if n is not None and n.remap_failure:
            problems.append("row remapping failed: the GPU needs replacing")
        elif n is not None and n.remap_pending:
            problems.append("row remapping pending: reset the GPU")
        if dev.bdf in faults:
            problems.append(faults[dev.bdf])
        viable, why = group_viability(sysfs, dev.iommu_group)
        daemons = busy.get(None, []) if dev.bdf not in claimed and dev.driver == "nvidia" else []
        in_use = "; ".join(busy.get(dev.bdf, []) + daemons)
        reasons = problems + ([f"cannot be passed through: {why}"] if not viable else []) + ([in_use] if in_use else [])
        if supported is not None and not supported.get(dev.device, False):
            reasons.append("the GPU kit's NVIDIA driver does not support it (not in the driver's supported-GPU list)")
        bar1 = next((b.size for b in dev.bars if b.index == 1), 0)
        out_gpus.append({
            "index": index, "uuid": gpu_uuid, "uuid_source": uuid_source, "name": name, "memory_mib": memory,
            "memory_source": memory_source, "pci_bdf": dev.bdf, "device_id": f"0x{dev.device:04x}",
            "architecture": model.architecture if model else "", "form": model.form if model else "",
            "numa_node": (n.numa_node if n and n.numa_node is not None else dev.numa_node),
            "iommu_group": dev.iommu_group, "driver": dev.driver, "bar1_mib": bar1 >> 20,
            "nvlink": {"domain": domain, "peers": peers},
            "healthy": not problems, "health_reason": "; ".join(problems),
            "xids": sorted(set(xids.get(dev.slot, []))),
            "ecc_uncorrected": n.ecc_uncorrected if n else None,
            "passthrough": {"viable": viable, "reason": why},
            "held_by": claimed.get(dev.bdf), "in_use": in_use,
            "usable": not reasons, "reason": "; ".join(reasons),
            "kit_supported": None if supported is None else supported.get(dev.device, False),
        })
    out_switches = []
    for index, dev in enumerate(switches):
        viable, why = group_viability(sysfs, dev.iommu_group)
        out_switches.append({
            "index": index, "pci_bdf": dev.bdf, "device_id": f"0x{dev.device:04x}",
            "name": NVSWITCH_MODELS.get(dev.device, f"NVIDIA NVSwitch 0x{dev.device:04x}"),
            "numa_node": dev.numa_node, "iommu_group": dev.iommu_group, "driver": dev.driver,
            "held_by": claimed.get(dev.bdf), "passthrough": {"viable": viable, "reason": why},
        })
    return out_gpus, out_switches
