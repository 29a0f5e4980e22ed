"""QEMU microVMs: command line, detached launch, liveness and graceful stop.

Everything about one VM lives in its vm_dir (see VmFiles), so a restarted agent finds a running
VM from the directory alone: the pidfile says which process, its /proc cmdline (which names the
vm_dir) proves the pid was not reused, the QMP socket controls it, and QEMU itself keeps
appending the workload's streams to the .raw files while no agent runs.

QEMU is started by a shell that backgrounds it under `setsid` and exits: it is never our child,
so neither the agent's exit nor a SIGKILL to it, nor asyncio's subprocess transport (which
kills live children when it is closed or collected), can take the VM down.

A VM given GPUs is a q35 machine instead of microvm (`VmLaunch.machine`, planned by q35.py):
the same kernel, streams and spec, virtio on PCI rather than MMIO, and the passed devices.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.guest.kit import GuestKit
from nodes.agent.net.tap import NETNS_RUN_DIR
from nodes.agent.vmm import qmp
from nodes.agent.vmm.accel import Accel
from nodes.agent.vmm.q35 import Q35Machine, pin_vcpus
from nodes.agent.vmm.spec import FW_CFG_NAME, GuestSpec, render

__all__ = ["GuestSpec", "VmLaunch", "VmFiles", "QemuVm", "alive", "read_pid"]

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
READY_TIMEOUT_S = 15.0
# The guest spec holds the secret env. The launch shell opens guest.sh on this descriptor and
# unlinks it before QEMU runs; QEMU reads the spec through the descriptor once, at start-up
# (fw_cfg file= loads the whole file then). So no file on the node holds a secret while the
# VM runs, a crash cannot leave one behind, and the command line names only the descriptor.
SPEC_FD = 3
SPEC_FD_PATH = f"/proc/self/fd/{SPEC_FD}"


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


def _disk_format(disk: Path) -> str:
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


def _guest_fragment(l: VmLaunch) -> str:
    net = None
    if l.net is not None:
        net = {"addr": f"{l.net.address}/{l.net.prefixlen}", "gw": str(l.net.gateway), "mac": l.net.mac,
               "dns": " ".join(l.net.nameservers)}
    return render(l.guest, hostname=l.name, root_dev="/dev/vda" if l.disk else None, net=net,
                  gpus=len(l.machine.gpus) if l.machine else 0)


def _write_private(path: Path, text: str) -> None:
    """Root-only from creation on: the spec carries the secret env (and lives only until the
    launch shell has opened and unlinked it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _absolute(l: VmLaunch) -> VmLaunch:
    kit = replace(l.kit, kernel=l.kit.kernel.absolute(), initrd=l.kit.initrd.absolute())
    return replace(l, vm_dir=l.vm_dir.absolute(), kit=kit, disk=l.disk.absolute() if l.disk else None)


def read_pid(vm_dir: Path) -> int | None:
    """The pid of this vm_dir's QEMU if it runs (not a zombie, and really ours), else None.
    Blocking (small /proc reads): call through asyncio.to_thread from async code."""
    f = VmFiles(vm_dir.absolute())
    try:
        pid = int(f.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    # A reused pid would not name our pidfile on its command line.
    if str(f.pid).encode() not in cmdline.split(b"\0") or state in ("Z", "X"):
        return None
    return pid


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def alive(vm_dir: Path) -> bool:
    return read_pid(vm_dir) is not None


def _log_tail(vm_dir: Path, lines: int = 8) -> str:
    try:
        text = VmFiles(vm_dir).log.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


class QemuVm:
    """Launches and stops QEMU processes; holds no state beyond what the vm_dir records.

    `netns` names the namespace (ip netns) the VMs' TAPs live in; QEMU is started inside it
    and everything else about it (files, QMP socket, liveness) is unchanged."""

    def __init__(self, *, netns: str | None = None):
        self.netns = netns

    def _prefix(self) -> list[str]:
        if self.netns is None:
            return []
        # QEMU attaches its TAP by name (TUNSETIFF), which looks the name up in the calling
        # process's namespace, so QEMU itself must be in NS. The other way, opening the TAP
        # here in a setns'd thread and passing `-netdev tap,fd=N`, would tie the VM's network
        # to a descriptor that has to survive the launch shell and setsid, leaves a command
        # line that no longer names its TAP, and rules out attaching by name later (QMP
        # netdev_add on an adopted VM). Only the network namespace is entered (nsenter, not
        # `ip netns exec`): QEMU keeps the agent's mount namespace and /sys, which VFIO will
        # need, and its QMP socket is a path, which works across network namespaces.
        return ["nsenter", f"--net={NETNS_RUN_DIR}/{self.netns}", "--"]

    async def launch(self, l: VmLaunch) -> int:
        # Absolute paths: QEMU runs with the vm_dir as cwd, and read_pid matches the pidfile
        # path against QEMU's command line.
        l = await asyncio.to_thread(_absolute, l)
        f = VmFiles(l.vm_dir)
        if await asyncio.to_thread(alive, l.vm_dir):
            raise AgentError(f"VM {l.name} is already running")
        disk_format = await asyncio.to_thread(_disk_format, l.disk) if l.disk else None
        tsc_khz = await asyncio.to_thread(host_tsc_khz)

        def prepare() -> int:
            l.vm_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(l.vm_dir, 0o700)
            for stale in (f.pid, f.qmp):
                stale.unlink(missing_ok=True)
            _write_private(f.guest_sh, _guest_fragment(l))
            return os.open(f.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        try:
            log_fd = await asyncio.to_thread(prepare)
        except ValueError as e:
            raise AgentError(str(e), permanent=True) from e
        try:
            # The shell backgrounds QEMU in a session of its own and exits at once, printing
            # its pid: QEMU is orphaned into init's care with no tie to this process. It hands
            # QEMU the spec on SPEC_FD and unlinks the file first (see SPEC_FD).
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c",
                f'log=$1 spec=$2; shift 2; exec {SPEC_FD}<"$spec" || exit 1; rm -f "$spec"; '
                'setsid "$@" </dev/null >>"$log" 2>&1 & echo $!',
                "sh", str(f.log), str(f.guest_sh), *self._prefix(), *(l.machine.launch_prefix() if l.machine else []),
                *command_line(l, disk_format, tsc_khz, spec_path=SPEC_FD_PATH),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, start_new_session=True,
                cwd=f.vm_dir,
            )  # fmt: skip
            out, _ = await proc.communicate()
            pid = int(out.strip())
        finally:
            await asyncio.to_thread(os.close, log_fd)
            # Normally gone already; not so if the shell failed before its rm.
            await asyncio.to_thread(f.guest_sh.unlink, missing_ok=True)
        await self._wait_ready(l, pid)
        if l.machine is not None:
            await pin_vcpus(f.qmp, l.machine)
        return pid

    async def _wait_ready(self, l: VmLaunch, pid: int) -> None:
        """Until QMP answers: the pidfile is written and the machine runs. A QEMU that dies
        first (bad TAP, unreadable disk, ...) is reported with the end of its log."""
        f = VmFiles(l.vm_dir)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if await asyncio.to_thread(read_pid, l.vm_dir) == pid:
                try:
                    await qmp.command(f.qmp, "query-status", timeout=2)
                    return
                except qmp.QmpError:
                    pass
            elif not await asyncio.to_thread(_running, pid):
                break
            await asyncio.sleep(0.02)
        if await asyncio.to_thread(_running, pid):
            os.kill(pid, signal.SIGKILL)
        tail = await asyncio.to_thread(_log_tail, l.vm_dir)
        raise AgentError(f"QEMU did not start for VM {l.name}: {tail or 'no output'}")

    @staticmethod
    def alive(vm_dir: Path) -> bool:
        return alive(vm_dir)

    async def stop(self, vm_dir: Path, *, timeout: float = 10) -> None:
        """ACPI power button through QMP; /init stops the workload and powers off. SIGKILL if
        the VM is still there after `timeout`. Returns once the process is gone; a VM that is
        not running is already stopped."""
        pid = await asyncio.to_thread(read_pid, vm_dir)
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        try:
            await qmp.command(VmFiles(vm_dir).qmp, "system_powerdown", timeout=min(2.0, timeout))
        except qmp.QmpError:
            pass  # QMP gone or wedged: the kill below still ends it
        if await self._gone(vm_dir, deadline):
            return
        try:
            if await asyncio.to_thread(read_pid, vm_dir) == pid:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not await self._gone(vm_dir, time.monotonic() + 5):
            raise AgentError(f"QEMU pid {pid} survived SIGKILL")

    async def _gone(self, vm_dir: Path, deadline: float) -> bool:
        while True:
            if not await asyncio.to_thread(alive, vm_dir):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
