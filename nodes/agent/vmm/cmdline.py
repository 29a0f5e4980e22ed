"""QEMU's command line for a VM: machine, accelerator, kernel command line, devices, and the
guest spec fragment it hands the guest through fw_cfg. Pure functions of a VmLaunch (and of
the host's TSC rate under TCG): nothing here starts or watches a process (see qemu.py).

Everything about one VM lives in its vm_dir (VmFiles): the pidfile, the QMP socket, qemu.log
and the workload's streams, so the command line names those files and a restarted agent
finds them again from the directory alone.

A VM given GPUs is a q35 machine instead of microvm (`VmLaunch.machine`, planned by q35.py):
the same kernel, streams and spec, virtio on PCI rather than MMIO, and the passed devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodes.agent.guest.kit import GuestKit
from nodes.agent.vmm.accel import Accel
from nodes.agent.vmm.q35 import Q35Machine
from nodes.agent.vmm.spec import FW_CFG_NAME, GuestSpec, render

QEMU = "qemu-system-x86_64"
# Under TCG QEMU's own memory is dominated by the translation cache (default 1 GiB, filled as
# the guest runs), so it is capped; the cap trades memory for boot time. A warm start of hello
# translates far more than the kernel's boot alone: from /init on the guest keeps generating
# code at ~40 MiB/s (QMP `info jit`), so a small cache is flushed and refilled over and over.
# Measured on the 2-core TCG host (full VM, hello): 16 MiB flushed 7 times and the warm start
# took ~4.5 s; 24 MiB, 3 flushes; 32 MiB, 1 flush and ~2.8 s. The floor (kernel only) is the
# same at 16, 32 and 48. Every MiB of the cap is resident per VM, hence 32, not more.
TCG_TB_SIZE_MIB = 32
# quiet: the serial console is slow under TCG and only feeds qemu.log; the i8042/8250/pci
# options skip probes for hardware microvm does not have. init_on_alloc=0: Debian turns on
# zeroing of every page the guest kernel allocates, a hardening against leaks between the
# guest's own processes (all one tenant's); under TCG it cost ~200 ms of a ~2.9 s boot.
KERNEL_CMDLINE = (
    "console=ttyS0 quiet panic=-1 reboot=t pci=off 8250.nr_uarts=1 "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.nokbd cryptomgr.notests init_on_alloc=0"
)
# Under TCG only: the guest kernel's CPU-flaw mitigations (page table isolation, retpolines,
# buffer clearing) target flaws of the CPU the guest runs on. Under TCG that CPU is emulated:
# guest privilege levels and page tables are checked in software and the guest's branches are
# not the host's, so they defend against nothing there (the VM boundary is QEMU's process,
# which they do not shape) and only cost time (~100 ms per boot). Under KVM the guest runs on
# the real CPU and keeps them.
TCG_CMDLINE = "mitigations=off"


@dataclass(frozen=True)
class GuestVolume:
    """One volume as the VM gets it: a virtio block device whose serial /init looks up to mount
    it at `mount_path` inside the container. `source` and `cache` come from the volume backend
    (volumes.VolumeAttach); a read-only volume is read-only to the device itself, so no guest
    can write it, whatever it remounts."""

    serial: str
    source: str
    mount_path: str
    readonly: bool = False
    cache: str = "none"


def volume_serial(index: int) -> str:
    # virtio-blk serials hold 20 bytes, volume ids up to 63: the guest finds a volume by its
    # place in the spec instead.
    return f"gantry-vol{index}"


@dataclass(frozen=True)
class VmLaunch:
    name: str
    vm_dir: Path
    kit: GuestKit
    accel: Accel
    disk: Path | None  # the VM's root disk (qcow2 overlay or raw ext4), mounted rw as /
    vcpus: int
    memory_mib: int
    guest: GuestSpec
    net: object | None = None  # nodes.agent.network.VmNetwork (duck-typed: tap, mac, address, gateway, prefixlen, nameservers)
    machine: Q35Machine | None = None  # set: a q35 VM with passed-through devices; None: microvm
    volumes: tuple[GuestVolume, ...] = ()


@dataclass(frozen=True)
class VmFiles:
    vm_dir: Path

    @property
    def pid(self) -> Path:
        return self.vm_dir / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.vm_dir / "qmp.sock"

    @property
    def log(self) -> Path:
        return self.vm_dir / "qemu.log"

    @property
    def stdout(self) -> Path:
        return self.vm_dir / "stdout.raw"

    @property
    def stderr(self) -> Path:
        return self.vm_dir / "stderr.raw"

    @property
    def status(self) -> Path:
        return self.vm_dir / "status.raw"

    @property
    def guest_sh(self) -> Path:
        return self.vm_dir / "guest.sh"


def disk_format(disk: Path) -> str:
    """The root disk's format for -drive: a qcow2 overlay, or a raw ext4 image. Blocking."""
    with open(disk, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def host_tsc_khz() -> int | None:
    """The host's TSC rate, from /proc/cpuinfo. Blocking: call via asyncio.to_thread.

    Under TCG the guest's TSC is the host's TSC. microvm offers no HPET or PM timer, so the
    kernel calibrates the TSC against the PIT, and on a busy host (TCG vCPUs are host threads
    competing for the same cores) that calibration fails and the 6.1 kernel hangs before
    /init. Telling it the rate (tsc_early_khz) skips calibration; tsc=reliable then keeps the
    jiffies watchdog, which lags under load, from demoting the TSC."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return round(float(value) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_cmdline(accel: Accel, tsc_khz: int | None) -> str:
    if accel.name != "tcg":
        return KERNEL_CMDLINE
    if tsc_khz:
        return f"{KERNEL_CMDLINE} {TCG_CMDLINE} tsc_early_khz={tsc_khz} tsc=reliable"
    return f"{KERNEL_CMDLINE} {TCG_CMDLINE}"


def machine_args(l: VmLaunch) -> list[str]:
    if l.machine is not None:
        return l.machine.machine_args(l.accel.name)
    if l.accel.name == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host"]
    else:
        accel = ["-accel", f"tcg,tb-size={TCG_TB_SIZE_MIB}", "-cpu", "max"]
    return ["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on", *accel]


def command_line(l: VmLaunch, disk_format: str | None = None, tsc_khz: int | None = None,
                 spec_path: str | None = None) -> list[str]:
    """QEMU's argv for a VM. tsc_khz None means read it here (a small blocking /proc read:
    async callers pass `await asyncio.to_thread(host_tsc_khz)` instead). spec_path: where
    QEMU reads the guest spec (default the VM dir's guest.sh; launch() passes SPEC_FD_PATH)."""
    if tsc_khz is None and l.accel.name == "tcg":
        tsc_khz = host_tsc_khz()
    f = VmFiles(l.vm_dir)
    cmdline = kernel_cmdline(l.accel, tsc_khz)
    # virtio over MMIO on microvm, over PCI on q35.
    bus = "device" if l.machine is None else "pci"
    argv = [
        QEMU,
        "-name", l.name,
        *machine_args(l),
        "-smp", str(l.vcpus),
        "-m", str(l.memory_mib),
        *(l.machine.memory_args() if l.machine else []),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(l.kit.kernel),
        "-initrd", str(l.kit.initrd),
        "-append", l.machine.kernel_cmdline(cmdline) if l.machine else cmdline,
        # The kernel console shares qemu.log with QEMU's own stderr: diagnostics, never logs.
        "-chardev", f"file,id=console,path={f.log},append=on",
        "-serial", "chardev:console",
        "-fw_cfg", f"name={FW_CFG_NAME},file={spec_path or f.guest_sh}",
        # Port 0 is reserved for a console, so three named ports need four.
        "-device", f"virtio-serial-{bus},max_ports=4",
    ]  # fmt: skip
    for port, path in (("stdout", f.stdout), ("stderr", f.stderr), ("status", f.status)):
        argv += [
            "-chardev", f"file,id={port},path={path},append=on",
            "-device", f"virtserialport,chardev={port},name=gantry.{port}",
        ]  # fmt: skip
    if l.disk is not None:
        argv += [
            "-drive", f"id=root,file={l.disk},format={disk_format or 'raw'},if=none,discard=unmap",
            "-device", f"virtio-blk-{bus},drive=root",
        ]  # fmt: skip
    for i, v in enumerate(l.volumes):
        # discard=unmap: what the guest's ext4 frees (mounted with `discard`) goes back to the
        # host as holes. werror/rerror=report: an I/O error reaches the guest as one, instead
        # of QEMU pausing the whole VM (its default on ENOSPC) with nobody to resume it.
        argv += [
            "-drive", f"id=vol{i},{v.source},if=none,cache={v.cache},discard=unmap,werror=report,rerror=report"
                      + (",readonly=on" if v.readonly else ""),
            "-device", f"virtio-blk-{bus},drive=vol{i},serial={v.serial}" + (",bus=pcie.0" if l.machine else ""),
        ]  # fmt: skip
    if l.net is not None:
        argv += [
            "-netdev", f"tap,id=net0,ifname={l.net.tap},script=no,downscript=no",
            "-device", f"virtio-net-{bus},netdev=net0,mac={l.net.mac}",
        ]  # fmt: skip
    if l.machine is not None:
        argv += l.machine.device_args()
    argv += [
        # Relative to QEMU's cwd (the vm_dir): a unix socket path is limited to 107 bytes.
        "-qmp", f"unix:{f.qmp.name},server=on,wait=off",
        "-pidfile", str(f.pid),
    ]  # fmt: skip
    return argv


def floor_command_line(kit: GuestKit, accel: Accel, tsc_khz: int | None = None, memory_mib: int = 256) -> list[str]:
    """The bench's floor: the same machine, accelerator, kernel and kernel command line
    as a real VM, booting the floor initramfs (its /init prints FLOOR_MARKER on the serial
    console, here QEMU's stdout, and powers off). QEMU exits when the guest does."""
    if tsc_khz is None and accel.name == "tcg":
        tsc_khz = host_tsc_khz()
    l = VmLaunch("floor", Path("/nonexistent"), kit, accel, None, 1, memory_mib, GuestSpec(argv=["true"]))
    return [
        QEMU, *machine_args(l), "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kit.kernel), "-initrd", str(kit.floor_initrd),
        "-append", kernel_cmdline(accel, tsc_khz), "-serial", "stdio",
    ]  # fmt: skip


def guest_fragment(l: VmLaunch) -> str:
    net = None
    if l.net is not None:
        net = {"addr": f"{l.net.address}/{l.net.prefixlen}", "gw": str(l.net.gateway), "mac": l.net.mac,
               "dns": " ".join(l.net.nameservers)}
    return render(l.guest, hostname=l.name, root_dev="/dev/vda" if l.disk else None, net=net,
                  gpus=len(l.machine.gpus) if l.machine else 0,
                  volumes=[(v.serial, "ro" if v.readonly else "rw", v.mount_path) for v in l.volumes])
