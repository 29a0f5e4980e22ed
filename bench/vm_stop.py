"""How long stopping a microVM takes (QemuVm.stop), and finding a cached guest kit.

The QEMU tests (tests/agent/test_vmm.py, test_guest_kit.py) check why a stop ended (the guest
powered off on the power button, or was killed once its grace ran out) and that a cached kit is
not rebuilt; how long that takes is measured here (DESIGN section 11: timings live in bench/).
Each figure is min / median / max over RUNS runs, on a busybox root disk under the test kit
(/var/cache/gantry-agent-test, built by the first run of either):
  - graceful: a workload that exits on SIGTERM, from stop() to QEMU gone (target: well under
    the 20 s grace, which would mean the guest ignored the button and was killed),
  - after grace: a workload that ignores SIGTERM, stop(timeout=2): the grace plus the kill,
  - stopped again: stop() of a VM already gone (nothing to do),
  - cached kit: ensure_kit() when the kit is already built (a stat, not a rebuild).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit import kill_under, say  # noqa: E402
from tests.agent.conftest_vmm import KIT_CACHE, make_base_disk, overlay, wait_for_event  # noqa: E402

RUNS = int(os.environ.get("BENCH_VM_STOP_RUNS", "3"))
GRACEFUL = 'trap "echo got TERM; exit 0" TERM; echo up; while :; do sleep 0.2; done'
STUBBORN = 'trap "" TERM; echo up; while :; do sleep 1; done'


def spread(samples: list[float]) -> str:
    return f"{min(samples):7.3f} / {statistics.median(samples):7.3f} / {max(samples):7.3f} s"


async def booted(launch) -> None:
    from nodes.agent.vmm.qemu import QemuVm, VmFiles

    await QemuVm().launch(launch)
    await wait_for_event(launch.vm_dir, "start")
    while "up" not in await asyncio.to_thread(VmFiles(launch.vm_dir).stdout.read_text):
        await asyncio.sleep(0.05)  # its trap is set


async def timed(coro) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


async def main(work: Path) -> None:
    from nodes.agent.guest.kit import ensure_kit
    from nodes.agent.vmm.accel import probe_accel
    from nodes.agent.vmm.qemu import QemuVm, VmLaunch
    from nodes.agent.vmm.spec import GuestSpec

    KIT_CACHE.mkdir(parents=True, exist_ok=True)
    kit = await ensure_kit(KIT_CACHE)
    accel = await probe_accel(KIT_CACHE, kit)
    (work / "rootfs").mkdir()
    base = make_base_disk(work / "rootfs")

    def launch(name: str, script: str, grace_s: float) -> VmLaunch:
        return VmLaunch(name=name, vm_dir=work / name, kit=kit, accel=accel,
                        disk=overlay(base, work / f"{name}.qcow2"), vcpus=1, memory_mib=128,
                        guest=GuestSpec(argv=["sh", "-c", script], env={"PATH": "/bin"}, stop_grace_s=grace_s),
                        net=None)

    figures: dict[str, list[float]] = {"graceful": [], "after grace": [], "stopped again": [], "cached kit": []}
    for run in range(RUNS):
        polite = launch(f"graceful-{run}", GRACEFUL, 10)
        await booted(polite)
        figures["graceful"].append(await timed(QemuVm().stop(polite.vm_dir, timeout=20)))
        stubborn = launch(f"stubborn-{run}", STUBBORN, 600)
        await booted(stubborn)
        figures["after grace"].append(await timed(QemuVm().stop(stubborn.vm_dir, timeout=2)))
        figures["stopped again"].append(await timed(QemuVm().stop(stubborn.vm_dir, timeout=2)))
        figures["cached kit"].append(await timed(ensure_kit(KIT_CACHE)))
    say(f"QemuVm.stop and ensure_kit, {accel.name}, min / median / max of {RUNS} runs:")
    for what, samples in figures.items():
        say(f"  {what:14} {spread(samples)}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="gantry-vm-stop-bench-") as tmp:
        try:
            asyncio.run(main(Path(tmp)))
        finally:
            kill_under(Path(tmp))
