"""`gantry-agent preflight`: can this node pass its GPUs through to VMs, and if not, what to change.

Run at agent start and sent to the plane in the inventory (the admin and `doctor` show it). Each
check measures the real thing through the node's Sysfs and says what to change when it fails:
a kernel parameter, a module, a BIOS setting. `required` checks decide `passthrough`; a node
without it offers no GPU to the scheduler and says why. Advice (hugepages) never blocks.

On a simulated node the checks run against its fake tree; KVM, locked memory and the GPU kit
are not needed there (its VMs boot without passthrough under whatever accelerator the host
has), so those three are advice. Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

import resource
from typing import Any

from nodes.agent.sysfs import Sysfs

__all__ = ["preflight"]

IOMMU_FIX = ("add intel_iommu=on iommu=pt (Intel) or amd_iommu=on iommu=pt (AMD) to the kernel command line "
             "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot), and enable VT-d / AMD-Vi "
             "(IOMMU) in the BIOS")


def _check(name: str, ok: bool, detail: str, fix: str = "", *, required: bool = True) -> dict[str, Any]:
    return {"name": name, "ok": ok, "required": required, "detail": detail, "fix": "" if ok else fix}


def _vfio_module(sysfs: Sysfs) -> tuple[bool, str]:
    if sysfs.driver_loaded("vfio-pci"):
        return True, "vfio-pci driver loaded"
    release = sysfs.kernel_release()
    modules = sysfs.lib("modules", release)
    builtin = sysfs.read(modules / "modules.builtin") or ""
    if "vfio-pci.ko" in builtin or "vfio/pci/vfio-pci" in builtin:
        return True, "vfio-pci built into the kernel"
    found = list((modules / "kernel" / "drivers" / "vfio" / "pci").glob("vfio-pci.ko*")) if modules.is_dir() else []
    if found:
        return True, f"vfio-pci module available ({found[0].name}); the agent loads it on first use"
    return False, f"no vfio-pci module for kernel {release}"


CAP_SYS_RESOURCE = 24


def _can_raise_limits() -> bool:
    """Whether this process may raise a hard rlimit: CAP_SYS_RESOURCE in its effective set
    (root in a container often lacks it)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def _memlock(limits: tuple[int, int] | None, can_raise: bool | None) -> tuple[bool, str]:
    soft, hard = limits if limits is not None else resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def show(v: int) -> str:
        return "unlimited" if v == resource.RLIM_INFINITY else f"{v >> 10} KiB"

    detail = f"RLIMIT_MEMLOCK soft {show(soft)}, hard {show(hard)}"
    if hard == resource.RLIM_INFINITY:
        return True, detail + "; QEMU gets an unlimited one for each passthrough VM"
    if _can_raise_limits() if can_raise is None else can_raise:
        return True, detail + "; the agent has CAP_SYS_RESOURCE and raises it for each passthrough VM"
    return False, detail + ", and the agent lacks CAP_SYS_RESOURCE to raise it"


def preflight(sysfs: Sysfs, *, accel: str, accel_reason: str = "", gpus: list[dict], nvswitches: list[dict],
              simulated: bool, kit: dict | None, memlock: tuple[int, int] | None = None,
              can_raise: bool | None = None) -> dict[str, Any]:
    """`gpus`/`nvswitches`: the inventory's (discover.describe); `kit`: the GPU kit's summary,
    None when none is built; `memlock`: (soft, hard) and `can_raise` (CAP_SYS_RESOURCE) to
    check instead of this process's own."""
    checks = []
    groups = sysfs.iommu_groups()
    cmdline = sysfs.kernel_cmdline()
    if groups:
        checks.append(_check("iommu", True, f"{len(groups)} IOMMU groups"))
    else:
        flags = [w for w in cmdline.split() if "iommu" in w]
        checks.append(_check("iommu", False, "no IOMMU groups in /sys/kernel/iommu_groups (kernel command line: "
                                              f"{' '.join(flags) or 'no iommu parameter'})", IOMMU_FIX))
    ok, detail = _vfio_module(sysfs)
    checks.append(_check("vfio-pci", ok, detail, "install the kernel's modules package (linux-image-$(uname -r)) and "
                                                  "modprobe vfio-pci; list it in /etc/modules-load.d/vfio.conf"))
    node = sysfs.dev("vfio", "vfio")
    checks.append(_check("/dev/vfio/vfio", node.exists(), "present" if node.exists() else "missing",
                         "modprobe vfio-pci (it creates /dev/vfio/vfio); in a container, pass --device /dev/vfio"))
    ok, detail = _memlock(memlock, can_raise if memlock is not None else None)
    checks.append(_check("memlock", ok, detail, "QEMU locks all guest memory for device DMA: run the agent as root with "
                                                "CAP_SYS_RESOURCE (a container: --cap-add SYS_RESOURCE or --ulimit "
                                                "memlock=-1), or set LimitMEMLOCK=infinity in its systemd unit",
                         required=not simulated))
    pages = sysfs.hugepages()
    free_1g = pages.get(1048576, (0, 0))[1]
    free_2m = pages.get(2048, (0, 0))[1]
    checks.append(_check(
        "hugepages", True,
        f"{free_1g} free 1 GiB pages, {free_2m} free 2 MiB pages" + ("" if free_1g or free_2m else
                                                                     ": guest memory will be locked 4 KiB pages"),
        required=False))
    if not free_1g and not free_2m:
        checks[-1]["fix"] = ("reserve 1 GiB pages for GPU VMs (default_hugepagesz=1G hugepagesz=1G hugepages=N on the "
                             "kernel command line): faster starts, less TLB pressure")
    kvm_ok = accel == "kvm"
    checks.append(_check("kvm", kvm_ok, f"{accel}: {accel_reason}".rstrip(": "),
                         "passthrough needs KVM: enable VT-x / AMD-V in the BIOS, load kvm_intel or kvm_amd, and run "
                         "on bare metal (or a VM with nested virtualisation and its own IOMMU)", required=not simulated))
    if simulated:
        checks[-1]["detail"] += " (simulated node: its VMs boot without passthrough, so KVM is not needed)"
    if kit is None:
        checks.append(_check("gpu kit", simulated, "not built" + (" (simulated node: none is needed)" if simulated else ""),
                             "the agent builds it at start (gantry-agent run); see its log for why it did not",
                             required=not simulated))
    else:
        checks.append(_check("gpu kit", True, f"NVIDIA {kit.get('driver_version')} for guest kernel "
                                              f"{kit.get('kernel_version')}", required=not simulated))

    for gpu in gpus:
        reason = gpu.get("reason", "")
        detail = f"{gpu['name']} in IOMMU group {gpu.get('iommu_group')}, driver {gpu.get('driver') or 'none'}"
        checks.append(_check(f"gpu {gpu['pci_bdf']}", not reason, detail + (f": {reason}" if reason else ""),
                             _gpu_fix(reason), required=False))
    for switch in nvswitches:
        viable = switch["passthrough"]["viable"]
        checks.append(_check(f"nvswitch {switch['pci_bdf']}", viable, switch["passthrough"]["reason"] or "viable",
                             "8-GPU VMs need every NVSwitch passed with the GPUs", required=False))

    required_failed = [c for c in checks if c["required"] and not c["ok"]]
    usable = [g for g in gpus if not g.get("reason")]
    if not gpus:
        reason = "no NVIDIA GPU on this node"
    elif required_failed:
        first = required_failed[0]
        reason = f"{first['name']}: {first['detail']}; {first['fix']}"
    elif not usable:
        reason = "no GPU can be passed through: " + "; ".join(f"{g['pci_bdf']}: {g['reason']}" for g in gpus)
    else:
        reason = ""
    return {
        "ok": not [c for c in checks if not c["ok"]],
        "passthrough": bool(gpus) and not required_failed and bool(usable),
        "reason": reason,
        "simulated": simulated,
        "checks": checks,
    }


def _gpu_fix(reason: str) -> str:
    if not reason:
        return ""
    if "IOMMU group" in reason or "no IOMMU group" in reason:
        return IOMMU_FIX if "turn the IOMMU on" in reason else "enable ACS on the PCIe switch (BIOS) or move the card"
    if "in use" in reason or "persistenced" in reason or "Fabric Manager" in reason:
        return "stop what holds the GPU (above); Gantry needs it free to bind it to vfio-pci"
    if "XID" in reason or "ECC" in reason or "remapping" in reason or "reset" in reason:
        return "reset the GPU (nvidia-smi -r, or reboot the host), then check it with nvidia-smi -q; replace it if the errors return"
    if "does not support" in reason:
        return "build the GPU kit from a newer driver release (docs/hardware.md)"
    return "see the reason"
