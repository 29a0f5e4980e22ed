"""Fixtures for the guest kit and QEMU tests: a real kit, a tiny busybox root disk, and a
helper that boots a VM on a copy-on-write overlay of it and waits for its final event.

The kit (and the accelerator probe's answer) live in /var/cache/gantry-agent-test, the one kit cache
of the tests (the end-to-end ones pass it as `--kit-cache`), so a rerun neither refetches the
kernel nor rebuilds the initramfs unless an input changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# What `from tests.agent.conftest_vmm import *` brings in: the fixtures, nothing that could
# shadow a name of the importing conftest.
__all__ = ["vmm_kit", "vmm_accel", "base_disk", "vm_launch"]

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("STATE_DIR", REPO / ".state"))
# The tests' --kit-cache (guest kit, GPU kit, accelerator probe): host-wide like the agent's own
# /var/cache/gantry-agent, so every checkout on the host (CI's clean ones too) reuses one build.
KIT_CACHE = Path(os.environ.get("GANTRY_TEST_KIT_CACHE", "/var/cache/gantry-agent-test"))
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "printf", "cat", "env", "id", "pwd", "sleep", "ls", "true", "false", "seq", "ip", "ping", "hostname")
TEST_UID = 1000


@pytest.fixture(scope="session")
def vmm_kit():
    from nodes.agent.guest.kit import ensure_kit

    KIT_CACHE.mkdir(parents=True, exist_ok=True)
    return asyncio.run(ensure_kit(KIT_CACHE))


@pytest.fixture(scope="session")
def vmm_accel(vmm_kit):
    from nodes.agent.vmm.accel import probe_accel

    return asyncio.run(probe_accel(KIT_CACHE, vmm_kit))


@pytest.fixture(scope="session")
def base_disk(tmp_path_factory) -> Path:
    return make_base_disk(tmp_path_factory.mktemp("rootfs"))


def make_base_disk(root: Path) -> Path:
    """A 32 MiB ext4 image holding a static busybox, a user `app` (uid 1000) and /srv/app:
    enough of a root filesystem for /init, built without the images engineer's pipeline (in
    `root`, an empty dir; the image lands beside it). bench/vm_stop.py boots it too."""
    (root / "bin").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\napp:x:{TEST_UID}:{TEST_UID}:app:/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text(f"root:x:0:\napp:x:{TEST_UID}:\n")
    (root / "srv" / "app").mkdir(parents=True)
    disk = root.parent / "base.ext4"
    subprocess.run(["truncate", "-s", "32M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(disk)], check=True)
    return disk


def overlay(base: Path, dest: Path) -> Path:
    """A qcow2 overlay on the raw base, as the image store makes them (copies nothing)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(dest)], check=True)
    return dest


def status_events(vm_dir: Path) -> list[dict]:
    path = vm_dir / "status.raw"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_for_event(vm_dir: Path, event: str, *, timeout: float = 90, count: int = 1) -> list[dict]:
    """Polls status.raw (TCG boots take seconds, more on a loaded 2-core CI machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(status_events, vm_dir)
        if sum(e["event"] == event for e in events) >= count:
            return events
        await asyncio.sleep(0.1)
    log = (vm_dir / "qemu.log").read_text(errors="replace")[-2000:] if (vm_dir / "qemu.log").exists() else ""
    raise AssertionError(f"no {event!r} event within {timeout}s: {status_events(vm_dir)}\nqemu.log: {log}")


async def wait_gone(vm_dir: Path, *, timeout: float = 30) -> None:
    from nodes.agent.vmm.qemu import alive

    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(alive, vm_dir):
        assert time.monotonic() < deadline, f"QEMU of {vm_dir} still running after {timeout}s"
        await asyncio.sleep(0.1)


@pytest.fixture
def vm_launch(tmp_path, vmm_kit, vmm_accel, base_disk):
    """Builds a VmLaunch for a named VM on its own overlay; every VM it made is killed at the
    end of the test, whatever the test did."""
    from nodes.agent.vmm.cmdline import VmLaunch
    from nodes.agent.vmm.qemu import QemuVm
    from nodes.agent.vmm.spec import GuestSpec

    made: list[Path] = []

    def make(name: str, argv: list[str], *, disk: bool = True, memory_mib: int = 128, **spec) -> VmLaunch:
        vm_dir = tmp_path / name
        made.append(vm_dir)
        spec.setdefault("env", {"PATH": "/bin"})
        return VmLaunch(
            name=name,
            vm_dir=vm_dir,
            kit=vmm_kit,
            accel=vmm_accel,
            disk=overlay(base_disk, tmp_path / f"{name}.qcow2") if disk else None,
            vcpus=1,
            memory_mib=memory_mib,
            guest=GuestSpec(argv=argv, **spec),
            net=None,
        )

    yield make
    for vm_dir in made:
        asyncio.run(QemuVm().stop(vm_dir, timeout=0))
    # Whatever else the test launched under its tmp_path (a VM dir it moved, say) dies too.
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(tmp_path).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), 9)
        except (OSError, ProcessLookupError):
            pass
