"""The GPUs of this node as the runtime and the daemon use them: the inventory (with preflight),
attaching a VM's GPUs and detaching them between tenants, recovery after a crash, and health.

Between tenants every function a VM had is reset while vfio-pci still holds it (the kernel uses
the first method `reset_method` offers: FLR, else a bus reset where the group allows one) and
given back to the driver it had. A GPU given back to the nvidia driver is then opened once
through NVML, which makes the driver initialise it afresh; with ECC on (always, on H100 and
H200 HBM3) that initialisation rewrites all of its memory, so nothing the last tenant left is
readable. A GPU that fails its reset, cannot be opened, or has no host driver to re-initialise
it, is taken out of service (`faults.json`) with the reason, and the plane stops scheduling it.

State under `<data_dir>/gpu/`: `known.json` (UUID, name and memory learnt per BDF while the
driver held the GPU, so a GPU bound to vfio-pci keeps its identity) and `faults.json`.
Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nodes.agent.gpu.discover import HARDWARE_XIDS, describe, driver_version, kernel_xids
from nodes.agent.gpu.nvml import Nvml, NvmlUnavailable
from nodes.agent.preflight import preflight
from nodes.agent.sysfs import Sysfs
from nodes.agent.vfio import Attachment, Vfio, VfioError
from nodes.agent.vmm.q35 import Q35Machine, plan

__all__ = ["GpuHost", "Prepared", "host_topology"]


def host_topology(sysfs: Sysfs) -> dict[str, Any]:
    nodes = []
    for node, cpus in sysfs.numa_nodes().items():
        pages = sysfs.numa_hugepages(node)
        nodes.append({"id": node, "cpus": len(cpus), "memory_mib": sysfs.numa_memory_mib(node),
                      "hugepages_1g_free": pages.get(1048576, (0, 0))[1], "hugepages_2m_free": pages.get(2048, (0, 0))[1]})
    pages = sysfs.hugepages()
    return {
        **sysfs.cpu_topology(),
        "memory_mib": (sysfs.meminfo_kib("MemTotal") or 0) // 1024,
        "numa_nodes": nodes,
        "hugepages": {f"{size}kB": {"total": total, "free": free} for size, (total, free) in pages.items()},
        "kernel": sysfs.kernel_release(),
    }


@dataclass(frozen=True)
class Prepared:
    """A VM's GPUs, bound: the q35 machine to boot (None on a simulated node, whose VMs boot
    as microVMs without passthrough), the vCPUs and memory it gets, and what the replica says
    about it while it runs ("" when nothing needs saying)."""

    machine: Q35Machine | None
    vcpus: int
    memory_mib: int
    notice: str = ""


def _kit_summary(kit: dict | None, gpus: list[dict]) -> dict | None:
    """What the inventory says of the kit: its versions, and whether its driver supports each GPU
    model of this node (the whole supported-GPU list stays in the kit)."""
    if kit is None:
        return None
    keys = ("driver_version", "package_version", "kernel_version", "vermagic", "build_seconds", "image_bytes")
    names = kit.get("supported_names", {})
    models = {g["device_id"]: g["name"] for g in gpus}
    return {**{k: kit.get(k) for k in keys},
            "supports": {f"{device} {name}": device in names for device, name in sorted(models.items())}}


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class GpuHost:
    """`simulated`: the board name when the node runs on a simulated tree (`--simulate-gpus`).
    `nvml`: the NVML to ask (None: never, as on a simulated node). `kit`: returns the GPU
    kit's summary (driver version, supported device ids), or None while none is built."""

    def __init__(self, sysfs: Sysfs, data_dir: Path, *, simulated: str | None = None, nvml: Nvml | None = None,
                 hostname: str | None = None, kit: Callable[[], dict | None] = lambda: None,
                 machine: Sysfs | None = None):
        self.sysfs = sysfs
        # This machine itself, for what a simulated node's VMs really get (its CPUs and memory).
        self.machine = machine or Sysfs("/")
        self.dir = Path(data_dir) / "gpu"
        self.simulated = simulated
        self.nvml = nvml
        self.hostname = hostname or socket.gethostname()
        self.kit = kit
        self.vfio = Vfio(sysfs, Path(data_dir) / "vfio", simulated=simulated is not None)
        # What the last inventory found wrong with each GPU beyond its faults (the group, the
        # kit, a holder), carried by every heartbeat until the next inventory.
        self._static: dict[str, list[str]] = {}

    def has_gpus(self) -> bool:
        return any(self.sysfs.pci_device(b).is_gpu for b in self.sysfs.pci_bdfs())

    @property
    def known_path(self) -> Path:
        return self.dir / "known.json"

    @property
    def faults_path(self) -> Path:
        return self.dir / "faults.json"

    def faults(self) -> dict[str, str]:
        return {bdf: entry["reason"] for bdf, entry in _load(self.faults_path).items()}

    def _fault(self, updates: dict[str, str]) -> None:
        if updates:
            faults = _load(self.faults_path)
            for bdf, reason in updates.items():
                faults[bdf] = {"reason": reason, "since": time.time()}
            _save(self.faults_path, faults)

    def clear_fault(self, bdf: str) -> bool:
        faults = _load(self.faults_path)
        if faults.pop(bdf, None) is None:
            return False
        _save(self.faults_path, faults)
        return True

    # -- inventory ----------------------------------------------------------------------------
    def _snapshot(self, gpus_on_driver: bool):
        if self.nvml is None or not gpus_on_driver:
            return None, ""
        try:
            return self.nvml.snapshot(), ""
        except NvmlUnavailable as e:
            return None, str(e)

    def inventory(self, *, accel: str, accel_reason: str = "", memlock: tuple[int, int] | None = None,
                  can_raise: bool | None = None) -> dict[str, Any]:
        """gpus, nvswitches, host, vfio, preflight, gpu_kit: the GPU part of the node's Inventory."""
        on_driver = any(self.sysfs.link_name(self.sysfs.pci(b, "driver")) == "nvidia" for b in self.sysfs.pci_bdfs())
        snapshot, nvml_problem = self._snapshot(on_driver)
        known = _load(self.known_path)
        kit = self.kit()
        supported = None if kit is None else {int(k, 16): v for k, v in kit.get("supported", {}).items()}
        # A simulated node's VMs never load the kit: what it supports is said, and decides nothing.
        gpus, nvswitches = describe(self.sysfs, snapshot=snapshot, known=known, hostname=self.hostname,
                                    faults=self.faults(), claimed=self.vfio.claimed(),
                                    supported=None if self.simulated else supported)
        if self.simulated and supported is not None:
            for gpu in gpus:
                gpu["kit_supported"] = supported.get(int(gpu["device_id"], 16), False)
        faults = self.faults()
        self._static = {g["pci_bdf"]: [r for r in g["reason"].split("; ") if r and r != faults.get(g["pci_bdf"])]
                        for g in gpus}
        learnt = {g["pci_bdf"]: {"uuid": g["uuid"], "name": g["name"], "memory_mib": g["memory_mib"]}
                  for g in gpus if g["uuid_source"] in ("nvml", "driver")}
        if learnt and any(known.get(b) != v for b, v in learnt.items()):
            _save(self.known_path, {**known, **learnt})
        report = preflight(self.sysfs, accel=accel, accel_reason=accel_reason, gpus=gpus, nvswitches=nvswitches,
                           simulated=self.simulated is not None, kit=kit, memlock=memlock, can_raise=can_raise)
        return {
            "gpus": gpus, "nvswitches": nvswitches, "host": host_topology(self.sysfs),
            "vfio": self.vfio.view(), "preflight": report,
            "nvidia": {"host_driver": (snapshot.driver_version if snapshot else driver_version(self.sysfs)),
                       "cuda": snapshot.cuda_version if snapshot else "", "nvml": "ok" if snapshot else nvml_problem},
            "gpu_kit": _kit_summary(kit, gpus), "simulated_board": self.simulated,
        }

    def health(self) -> list[dict[str, Any]]:
        """Per GPU, the heartbeat's verdict: what the last inventory found (group, kit, holders)
        with the faults and kernel-log XIDs of now. Cheap: no NVML, no /proc scan."""
        if not self._static:
            return []  # no GPU in the last inventory (a CPU node), or none taken yet
        faults = self.faults()
        xids = kernel_xids(self.sysfs)
        out = []
        for bdf in self._static:
            dev = self.sysfs.pci_device(bdf)
            problems = list(self._static[bdf])
            problems += [f"XID {x} ({HARDWARE_XIDS[x]}) in the kernel log" for x in sorted(set(xids.get(dev.slot, [])))
                         if x in HARDWARE_XIDS and f"XID {x} (" not in " ".join(problems)]
            if bdf in faults and faults[bdf] not in problems:
                problems.append(faults[bdf])
            out.append({"pci_bdf": bdf, "usable": not problems, "reason": "; ".join(problems)})
        return out

    # -- a VM's GPUs --------------------------------------------------------------------------
    def attach(self, owner: str, gpu_bdfs: list[str]) -> Attachment:
        faulty = {b: r for b, r in self.faults().items() if b in gpu_bdfs}
        if faulty:
            raise VfioError("GPU out of service: " + "; ".join(f"{b}: {r}" for b, r in faulty.items()))
        return self.vfio.bind(owner, gpu_bdfs)

    def prepare(self, owner: str, gpu_bdfs: list[str], *, vcpus: int, memory_mib: int) -> Prepared:
        """Binds the GPUs and plans the machine that gets them; on any failure gives them back."""
        attachment = self.attach(owner, gpu_bdfs)
        try:
            if self.simulated:
                return self._simulated(attachment, vcpus, memory_mib)
            kit = self.kit()
            if not kit or not kit.get("image"):
                raise VfioError("no GPU kit is built on this node (the agent builds it at start): the VM would have "
                                "no NVIDIA driver")
            machine = plan(attachment, self.sysfs, vcpus=vcpus, memory_mib=memory_mib, gpu_kit=Path(kit["image"]))
            return Prepared(machine, sum(len(n.vcpus) for n in machine.nodes), sum(n.memory_mib for n in machine.nodes))
        except BaseException:
            self.detach(owner)
            raise

    def _simulated(self, attachment: Attachment, vcpus: int, memory_mib: int) -> Prepared:
        # What this machine really has: a simulated 8-GPU replica asks for 128 vCPUs and 1.6 TB.
        cpus = len(os.sched_getaffinity(0))
        available = (self.machine.meminfo_kib("MemAvailable") or 1 << 20) // 1024
        got_vcpus = max(1, min(vcpus, cpus))
        got_memory = max(256, min(memory_mib, available // 4))
        notice = (f"simulated {self.simulated}: {len(attachment.gpus)} GPU(s) bound on the simulated board; the VM runs "
                  f"without them (no passthrough) on {got_vcpus} of {vcpus} vCPUs and {got_memory} of {memory_mib} MiB, "
                  "what this host has")
        return Prepared(None, got_vcpus, got_memory, notice)

    def detach(self, owner: str) -> list[str]:
        """Reset, give back, clear: returns what went wrong (each also recorded as a fault)."""
        attachment = self.vfio.attachment(owner)
        released = self.vfio.release(owner)
        if released is None or attachment is None:
            return []
        faults: dict[str, str] = {}
        for reset in released.resets:
            if not reset.ok and reset.kind in ("gpu", "nvswitch"):
                faults[reset.bdf] = f"failed its reset after a VM: {reset.reason}"
        for problem in released.restore_errors:
            faults.setdefault(problem.split(" ", 1)[0].rstrip(":"), f"not given back to its driver: {problem}")
        if not self.simulated:
            faults.update(self._clear_memory(attachment, faults))
        self._fault(faults)
        return [f"{bdf}: {reason}" for bdf, reason in faults.items()]

    def _clear_memory(self, attachment: Attachment, faults: dict[str, str]) -> dict[str, str]:
        out = {}
        back_on_driver = []
        for dev in attachment.devices:
            if dev.kind != "gpu" or dev.bdf in faults:
                continue
            if dev.original_driver == "nvidia":
                back_on_driver.append(dev.bdf)
            else:
                out[dev.bdf] = ("its memory could not be cleared after a tenant: no host NVIDIA driver re-initialises it "
                                f"(its driver is {dev.original_driver or 'none'}); let the nvidia driver own idle GPUs "
                                "(docs/hardware.md)")
        if back_on_driver:
            try:
                opened = self.nvml.open(back_on_driver) if self.nvml is not None else {
                    b: "no NVML to re-initialise it" for b in back_on_driver}
            except NvmlUnavailable as e:
                opened = {b: str(e) for b in back_on_driver}
            for bdf, problem in opened.items():
                if problem:
                    out[bdf] = f"its memory could not be cleared after a tenant: {problem}"
        return out

    def recover(self, alive: set[str]) -> list[str]:
        """After a crash: every VM that is not running gives its devices back (reset first)."""
        problems = []
        for owner in self.vfio.owners():
            if owner not in alive:
                problems += self.detach(owner)
        return problems
