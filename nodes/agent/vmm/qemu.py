"""QEMU microVMs as processes: detached launch, readiness, liveness and graceful stop. The
command line itself is built in cmdline.py.

A restarted agent finds a running VM from its vm_dir alone: the pidfile says which process, its
/proc cmdline (which names the vm_dir) proves the pid was not reused, the QMP socket controls
it, and QEMU itself keeps appending the workload's streams to the .raw files while no agent runs.

QEMU is started by a shell that backgrounds it under `setsid` and exits: it is never our child,
so neither the agent's exit nor a SIGKILL to it, nor asyncio's subprocess transport (which
kills live children when it is closed or collected), can take the VM down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.net.tap import NETNS_RUN_DIR
from nodes.agent.vmm import qmp
from nodes.agent.vmm.cmdline import VmFiles, VmLaunch, command_line, disk_format, guest_fragment, host_tsc_khz
from nodes.agent.vmm.q35 import pin_vcpus

__all__ = ["QemuVm", "alive", "read_pid"]

READY_TIMEOUT_S = 15.0
# The guest spec holds the secret env. The launch shell opens guest.sh on this descriptor and
# unlinks it before QEMU runs; QEMU reads the spec through the descriptor once, at start-up
# (fw_cfg file= loads the whole file then). So no file on the node holds a secret while the
# VM runs, a crash cannot leave one behind, and the command line names only the descriptor.
SPEC_FD = 3
SPEC_FD_PATH = f"/proc/self/fd/{SPEC_FD}"


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
        fmt = await asyncio.to_thread(disk_format, l.disk) if l.disk else None
        tsc_khz = await asyncio.to_thread(host_tsc_khz)

        def prepare() -> int:
            l.vm_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(l.vm_dir, 0o700)
            for stale in (f.pid, f.qmp):
                stale.unlink(missing_ok=True)
            _write_private(f.guest_sh, guest_fragment(l))
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
                *command_line(l, fmt, tsc_khz, spec_path=SPEC_FD_PATH),
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
