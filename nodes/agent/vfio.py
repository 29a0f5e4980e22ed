"""VFIO: which devices go into a VM with its GPUs, whether they may, binding them to vfio-pci,
and giving them back.

A GPU goes into a VM with its whole IOMMU group: the IOMMU isolates groups, not functions, so
every other member (the card's audio function, say) goes too. Only host bridges (class 0x0600)
and PCI bridges (0x0604) stay behind, matched exactly: NVSwitches report 0x0680 and go with the
GPUs. A group that also holds something that is not NVIDIA's (a NIC, an NVMe drive) is not
viable: passing it through would hand a host device to a tenant.

On an NVSwitch board a VM gets one GPU (its NVLinks unused) or the whole board: every GPU and
every NVSwitch. 2- and 4-GPU partitions need Fabric Manager's shared-NVSwitch mode (later work).

Binding is recorded before anything changes (`<state_dir>/<owner>.json`: every device with
the driver and override it had), so an agent killed half-way can undo it: `recover()` gives back
the devices of every owner whose VM is not running. Blocking sysfs work: call through
asyncio.to_thread.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.sysfs import PciDevice, Sysfs, VENDOR_NVIDIA

__all__ = ["Attachment", "Vfio", "VfioError", "group_viability", "passthrough_devices", "holders"]

VFIO_DRIVER = "vfio-pci"
# Daemons that keep NVIDIA devices open for as long as they run.
NVIDIA_DAEMONS = {
    "nvidia-persiste": "nvidia-persistenced keeps the GPUs open (systemctl stop nvidia-persistenced)",
    "nv-fabricmanage": "NVIDIA Fabric Manager holds the NVSwitches (systemctl stop nvidia-fabricmanager)",
    "nvidia-fabricma": "NVIDIA Fabric Manager holds the NVSwitches (systemctl stop nvidia-fabricmanager)",
    "nv-hostengine": "DCGM's nv-hostengine keeps the GPUs open (systemctl stop nvidia-dcgm)",
}


class VfioError(AgentError):
    """A passthrough that cannot happen as asked; the message says why and what to change."""

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message, permanent=permanent)


@dataclass(frozen=True)
class PassedDevice:
    bdf: str
    kind: str  # gpu, audio, nvswitch
    group: int
    numa_node: int
    bar64: tuple[int, ...]  # bytes of each 64-bit BAR: what the VM's 64-bit PCI hole must hold
    original_driver: str | None = None
    original_override: str | None = None


@dataclass(frozen=True)
class Attachment:
    """What one VM was given: the functions in passthrough order (a card's functions together)."""

    owner: str
    devices: tuple[PassedDevice, ...]
    simulated: bool = False

    @property
    def gpus(self) -> list[str]:
        return [d.bdf for d in self.devices if d.kind == "gpu"]

    @property
    def nvswitches(self) -> list[str]:
        return [d.bdf for d in self.devices if d.kind == "nvswitch"]

    def to_dict(self) -> dict:
        return {"owner": self.owner, "simulated": self.simulated, "devices": [asdict(d) for d in self.devices]}

    @classmethod
    def from_dict(cls, data: dict) -> Attachment:
        devices = tuple(PassedDevice(**{**d, "bar64": tuple(d.get("bar64", ()))}) for d in data["devices"])
        return cls(owner=data["owner"], devices=devices, simulated=bool(data.get("simulated")))


def _describe(dev: PciDevice) -> str:
    return f"{dev.bdf} (class 0x{dev.class16:04x}, vendor 0x{dev.vendor:04x}, driver {dev.driver or 'none'})"


def group_viability(sysfs: Sysfs, group: int | None) -> tuple[bool, str]:
    """(viable, why not): every member is passed along or is a host/PCI bridge."""
    if group is None:
        return False, ("the device is in no IOMMU group: turn the IOMMU on (intel_iommu=on or amd_iommu=on, "
                       "and VT-d / AMD-Vi in the BIOS)")
    blockers = []
    for bdf in sysfs.iommu_group_members(group):
        dev = sysfs.pci_device(bdf)
        if dev.is_bridge or dev.vendor == VENDOR_NVIDIA:
            continue
        blockers.append(_describe(dev))
    if blockers:
        return False, (f"IOMMU group {group} also holds {', '.join(blockers)}: passing it through would hand that "
                       "host device to a tenant; enable ACS on the PCIe switch above the GPU (BIOS setting) or move "
                       "the card to a slot of its own")
    return True, ""


def board_gpus(sysfs: Sysfs) -> tuple[list[PciDevice], list[PciDevice]]:
    devices = [sysfs.pci_device(b) for b in sysfs.pci_bdfs()]
    return [d for d in devices if d.is_gpu], [d for d in devices if d.is_nvswitch]


def passthrough_devices(sysfs: Sysfs, gpu_bdfs: list[str]) -> list[PciDevice]:
    """Every function a VM with these GPUs gets, in order: each GPU with the rest of its group,
    then the NVSwitches when the VM takes the whole board. Raises VfioError saying why not."""
    gpus, switches = board_gpus(sysfs)
    by_bdf = {g.bdf: g for g in gpus}
    chosen = []
    for bdf in gpu_bdfs:
        if bdf not in by_bdf:
            known = sysfs.pci_device(bdf) if sysfs.pci(bdf).exists() else None
            what = f"{_describe(known)}, which is not an NVIDIA GPU" if known else "no such PCI device"
            raise VfioError(f"this node has no GPU at {bdf}: {what}")
        chosen.append(by_bdf[bdf])
    if len(set(gpu_bdfs)) != len(gpu_bdfs):
        raise VfioError(f"a GPU is listed twice: {', '.join(gpu_bdfs)}")
    if switches and 1 < len(chosen) < len(gpus):
        raise VfioError(
            f"{len(chosen)} of the board's {len(gpus)} GPUs: on an NVSwitch board a VM gets one GPU or all of them "
            "with every NVSwitch; 2- and 4-GPU partitions need Fabric Manager's shared-NVSwitch mode, which "
            "Gantry does not offer yet")
    out: list[PciDevice] = []
    for gpu in chosen:
        viable, why = group_viability(sysfs, gpu.iommu_group)
        if not viable:
            raise VfioError(f"GPU {gpu.bdf} cannot be passed through: {why}")
        members = [sysfs.pci_device(b) for b in sysfs.iommu_group_members(gpu.iommu_group)]
        # The GPU first, then its other functions (its audio controller): QEMU puts a card's
        # functions on one root port, function 0 first.
        out.append(gpu)
        out += [m for m in members if m.bdf != gpu.bdf and not m.is_bridge]
    if switches and len(chosen) == len(gpus) > 1:
        for switch in switches:
            viable, why = group_viability(sysfs, switch.iommu_group)
            if not viable:
                raise VfioError(f"NVSwitch {switch.bdf} cannot be passed through: {why}")
            members = [sysfs.pci_device(b) for b in sysfs.iommu_group_members(switch.iommu_group)]
            out += [m for m in members if not m.is_bridge and m.bdf not in {d.bdf for d in out}]
    return out


def holders(sysfs: Sysfs, devices: list[PciDevice]) -> list[tuple[str | None, str]]:
    """Why these devices cannot be taken from the host right now ([] if they can), as
    (the device's BDF, or None when it concerns every NVIDIA device, reason): open handles on
    their device nodes, or a daemon that holds NVIDIA devices."""
    if not devices:
        return []  # a CPU node: no /proc walk on every hello
    nodes: dict[str, str] = {}
    nvidia_bound = [d for d in devices if d.driver in ("nvidia", "nvidia-nvswitch")]
    for dev in devices:
        if dev.kind == "gpu" and dev.driver == "nvidia":
            minor = _gpu_minor(sysfs, dev.bdf)
            if minor is not None:
                nodes[f"/dev/nvidia{minor}"] = dev.bdf
        if dev.driver == VFIO_DRIVER and dev.iommu_group is not None:
            nodes[f"/dev/vfio/{dev.iommu_group}"] = dev.bdf
    reasons = []
    for pid, comm in sorted(sysfs.processes().items()):
        if nvidia_bound and comm in NVIDIA_DAEMONS:
            reasons.append((None, f"{NVIDIA_DAEMONS[comm]} (pid {pid})"))
            continue
        for target in sysfs.open_files(pid):
            if target in nodes:
                reasons.append((nodes[target], f"{nodes[target]} is in use: {comm} (pid {pid}) holds {target} open"))
    return reasons


def _gpu_minor(sysfs: Sysfs, bdf: str) -> int | None:
    text = sysfs.read(sysfs.proc("driver", "nvidia", "gpus", bdf, "information")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Device Minor" and value.strip().isdigit():
            return int(value.strip())
    return None


@dataclass
class ResetResult:
    bdf: str
    kind: str
    ok: bool
    method: str = ""
    reason: str = ""


@dataclass
class Release:
    owner: str
    resets: list[ResetResult] = field(default_factory=list)
    restore_errors: list[str] = field(default_factory=list)


class Vfio:
    """Binds and gives back devices for VMs ("owners"), recording what it changed under
    `state_dir` first so that a crash at any point can be undone."""

    def __init__(self, sysfs: Sysfs, state_dir: Path, *, simulated: bool = False):
        self.sysfs = sysfs
        self.state_dir = Path(state_dir)
        self.simulated = simulated

    # -- records ----------------------------------------------------------------------------
    def _record(self, owner: str) -> Path:
        return self.state_dir / f"{owner}.json"

    def _save(self, attachment: Attachment, state: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self._record(attachment.owner)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({**attachment.to_dict(), "state": state}, indent=1) + "\n")
        os.replace(tmp, path)

    def attachment(self, owner: str) -> Attachment | None:
        try:
            return Attachment.from_dict(json.loads(self._record(owner).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owners(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.state_dir.glob("*.json") if not p.name.startswith("."))
        except OSError:
            return []

    def claimed(self) -> dict[str, str]:
        """bdf -> the owner that holds it."""
        out = {}
        for owner in self.owners():
            attachment = self.attachment(owner)
            for dev in attachment.devices if attachment else ():
                out[dev.bdf] = owner
        return out

    # -- bind -------------------------------------------------------------------------------
    def bind(self, owner: str, gpu_bdfs: list[str]) -> Attachment:
        """Every function these GPUs take with them, bound to vfio-pci and verified (driver link,
        /dev/vfio/<group>). Already bound for this owner: the same attachment again."""
        existing = self.attachment(owner)
        if existing is not None and sorted(existing.gpus) == sorted(gpu_bdfs):
            self._bind_all(existing)
            return existing
        devices = passthrough_devices(self.sysfs, gpu_bdfs)
        taken = {bdf: other for bdf, other in self.claimed().items() if other != owner}
        clash = [f"{d.bdf} (held for {taken[d.bdf]})" for d in devices if d.bdf in taken]
        if clash:
            raise VfioError(f"already passed to another VM: {', '.join(clash)}", permanent=False)
        busy = holders(self.sysfs, devices)
        if busy:
            raise VfioError("cannot take the GPUs from the host: " + "; ".join(reason for _, reason in busy))
        attachment = Attachment(owner, tuple(
            PassedDevice(bdf=d.bdf, kind=d.kind, group=d.iommu_group, numa_node=d.numa_node, bar64=tuple(b.size for b in d.bars if b.is_64bit),
                         original_driver=d.driver, original_override=d.driver_override)
            for d in devices), simulated=self.simulated)
        # Recorded before the first write: whatever happens next, recover() knows what to undo.
        self._save(attachment, "binding")
        try:
            self._bind_all(attachment)
        except BaseException:
            self._restore(attachment, Release(owner))
            self._record(owner).unlink(missing_ok=True)
            raise
        self._save(attachment, "bound")
        return attachment

    def _bind_all(self, attachment: Attachment) -> None:
        if not self.sysfs.driver_loaded(VFIO_DRIVER):
            raise VfioError("the vfio-pci driver is not loaded (modprobe vfio-pci)", permanent=False)
        for dev in attachment.devices:
            self._to_vfio(dev.bdf)
        for group in sorted({d.group for d in attachment.devices}):
            if not self.sysfs.vfio_group_node(group).exists():
                raise VfioError(f"/dev/vfio/{group} did not appear after binding its devices to vfio-pci")

    def _to_vfio(self, bdf: str) -> None:
        s = self.sysfs
        if s.link_name(s.pci(bdf, "driver")) == VFIO_DRIVER:
            return
        try:
            s.set_driver_override(bdf, VFIO_DRIVER)
            s.unbind(bdf)
            s.probe(bdf)
        except OSError as e:
            raise VfioError(f"binding {bdf} to vfio-pci failed: {os.strerror(e.errno or errno.EIO)}",
                            permanent=False) from e
        now = s.link_name(s.pci(bdf, "driver"))
        if now != VFIO_DRIVER:
            raise VfioError(f"{bdf} is bound to {now or 'no driver'} after probing, not vfio-pci", permanent=False)

    # -- give back --------------------------------------------------------------------------
    def release(self, owner: str, *, reset: bool = True) -> Release | None:
        """Resets every function (while vfio-pci still holds it), gives each back to the driver
        it had, and forgets the owner. None if the owner held nothing."""
        attachment = self.attachment(owner)
        if attachment is None:
            self._record(owner).unlink(missing_ok=True)
            return None
        result = Release(owner)
        if reset:
            for dev in attachment.devices:
                result.resets.append(self._reset(dev))
        self._restore(attachment, result)
        self._record(owner).unlink(missing_ok=True)
        return result

    def _reset(self, dev: PassedDevice) -> ResetResult:
        info = self.sysfs.pci_device(dev.bdf)
        if not info.reset_methods:
            return ResetResult(dev.bdf, dev.kind, False, reason="the device offers no reset method (no FLR, no bus reset)")
        try:
            self.sysfs.reset(dev.bdf)
        except OSError as e:
            return ResetResult(dev.bdf, dev.kind, False, info.reset_methods[0],
                               f"reset ({'/'.join(info.reset_methods)}) failed: {os.strerror(e.errno or errno.EIO)}")
        return ResetResult(dev.bdf, dev.kind, True, info.reset_methods[0])

    def _restore(self, attachment: Attachment, result: Release) -> None:
        s = self.sysfs
        for dev in attachment.devices:
            try:
                current = s.link_name(s.pci(dev.bdf, "driver"))
                override = s.pci_device(dev.bdf).driver_override
                if current == dev.original_driver and override == dev.original_override:
                    continue
                s.set_driver_override(dev.bdf, dev.original_override)
                if current != dev.original_driver:
                    s.unbind(dev.bdf)
                    if dev.original_driver is not None:
                        s.probe(dev.bdf)
                        if s.link_name(s.pci(dev.bdf, "driver")) != dev.original_driver:
                            s.bind(dev.bdf, dev.original_driver)
                now = s.link_name(s.pci(dev.bdf, "driver"))
                if now != dev.original_driver:
                    result.restore_errors.append(f"{dev.bdf} is on {now or 'no driver'}, not {dev.original_driver}")
            except OSError as e:
                result.restore_errors.append(f"{dev.bdf}: giving it back to {dev.original_driver} failed: "
                                             f"{os.strerror(e.errno or errno.EIO)}")

    def recover(self, alive: set[str]) -> list[Release]:
        """After a crash: gives back what every owner not in `alive` still holds."""
        out = []
        for owner in self.owners():
            if owner not in alive:
                released = self.release(owner)
                if released is not None:
                    out.append(released)
        return out

    # -- views ------------------------------------------------------------------------------
    def view(self) -> dict:
        """The groups that hold NVIDIA devices: members, drivers, viability, who holds them."""
        groups = self.sysfs.iommu_groups()
        claimed = self.claimed()
        out = []
        for group, members in groups.items():
            devices = [self.sysfs.pci_device(b) for b in members]
            if not any(d.is_gpu or d.is_nvswitch for d in devices):
                continue
            viable, why = group_viability(self.sysfs, group)
            out.append({
                "group": group, "viable": viable, "reason": why,
                "devices": [{"bdf": d.bdf, "kind": d.kind, "vendor": f"0x{d.vendor:04x}", "device": f"0x{d.device:04x}",
                             "class": f"0x{d.class_code:06x}", "driver": d.driver, "numa_node": d.numa_node,
                             "passed": not d.is_bridge, "held_by": claimed.get(d.bdf)} for d in devices],
            })
        return {"iommu": bool(groups), "groups": out}
