"""KVM or TCG, decided by booting a probe VM, never by the mere presence of /dev/kvm.

Some hosts expose a /dev/kvm that cannot run a stock guest: a paravirtual KVM (kvm_pvm) makes
QEMU abort on an MSR assertion with `-cpu host`/`max` and hangs the guest silently with other
CPU models. So the probe boots the kit's floor initramfs under KVM with a short timeout and
takes KVM only if that /init announced itself and the VM powered off. The answer holds until the
host reboots: it is cached per /proc/sys/kernel/random/boot_id (and kernel) in the host-wide
cache dir beside the guest kit, since it is a fact about the host, not about one data dir.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from nodes.agent.guest.kit import FLOOR_MARKER, GuestKit

PROBE_TIMEOUT_S = 8.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class Accel:
    name: Literal["kvm", "tcg"]
    reason: str


def _read_cache(path: Path, boot_id: str, kernel_version: str) -> Accel | None:
    try:
        data = json.loads(path.read_text())
        if data["boot_id"] == boot_id and data["kernel_version"] == kernel_version:
            return Accel(data["name"], data["reason"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _write_cache(path: Path, accel: Accel, boot_id: str, kernel_version: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**asdict(accel), "boot_id": boot_id, "kernel_version": kernel_version}) + "\n")
    os.replace(tmp, path)


def _kvm_usable() -> str | None:
    """None if /dev/kvm can be opened, else why not."""
    if not KVM_DEVICE.exists():
        return "no /dev/kvm on this host"
    try:
        os.close(os.open(KVM_DEVICE, os.O_RDWR))
    except OSError as e:
        return f"/dev/kvm cannot be opened ({e.strerror})"
    return None


async def _probe_kvm(kit: GuestKit, timeout: float) -> str | None:
    """None if the floor VM booted to /init and powered off under KVM, else what went wrong."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64",
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
        "-accel", "kvm", "-cpu", "host", "-m", "128",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kit.kernel), "-initrd", str(kit.floor_initrd),
        "-append", "console=ttyS0 quiet panic=-1 reboot=t",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    started = time.monotonic()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return f"probe VM did not reach /init within {timeout:g}s (paravirtual KVM?)"
    text = out.decode(errors="replace")
    if FLOOR_MARKER in text and proc.returncode == 0:
        return None
    last = [line for line in text.strip().splitlines() if FLOOR_MARKER not in line][-1:] or ["no output"]
    return f"probe VM failed after {time.monotonic() - started:.1f}s (exit {proc.returncode}): {last[0][:200]}"


async def probe_accel(cache_dir: Path, kit: GuestKit, *, timeout: float = PROBE_TIMEOUT_S) -> Accel:
    cache = Path(cache_dir) / "accel.json"
    await asyncio.to_thread(cache.parent.mkdir, parents=True, exist_ok=True)
    # Agents starting together on one host would each boot a probe VM and race on the
    # cache file: one probes, the others wait and read its answer.
    fd = await asyncio.to_thread(os.open, cache.with_name(".accel.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        return await _probe_cached(cache, kit, timeout)
    finally:
        await asyncio.to_thread(os.close, fd)


async def _probe_cached(cache: Path, kit: GuestKit, timeout: float) -> Accel:
    boot_id = (await asyncio.to_thread(BOOT_ID.read_text)).strip()
    cached = await asyncio.to_thread(_read_cache, cache, boot_id, kit.kernel_version)
    if cached:
        return cached
    problem = await asyncio.to_thread(_kvm_usable)
    if problem is None:
        started = time.monotonic()
        problem = await _probe_kvm(kit, timeout)
        if problem is None:
            accel = Accel("kvm", f"kvm: probe VM booted to /init in {time.monotonic() - started:.1f}s")
    if problem is not None:
        accel = Accel("tcg", f"kvm: {problem}; using tcg (slow: no hardware virtualization)")
    await asyncio.to_thread(_write_cache, cache, accel, boot_id, kit.kernel_version)
    return accel
