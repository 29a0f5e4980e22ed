"""Cold-start benchmark of the microVM runtime, for the `hello` image.

Self-contained: re-executes itself inside a throwaway network namespace (so TAPs, nftables
rules and published ports never touch the host's network), starts the local registry inside
it with scripts/registry/registry.py (the same script as `make registry`) and pushes
gantry/hello there, and uses a temporary data dir (the guest kit is cached in
/var/cache/gantry-agent-test/kit, shared with the agent tests, so only the first run builds it).

Prints:
  - the floor: the same kernel booting an initramfs whose /init only powers off (kit.floor_initrd),
    run alternately with the warm starts,
  - cold start (empty image cache) and warm start (cached image), broken down into pull,
    unpack, disk, QEMU start, kernel to /init and workload ready (health check passed),
  - QEMU's memory beyond guest RAM for a running VM, from /proc/<pid>/smaps: its own
    (anonymous) memory, the page cache every VM shares, and RSS and PSS (vmm/memory.py),
  - ten VMs started at once: how many reach running, how long it took, and their memory.
Targets (issue 10): warm start within 1.5x the floor; < 30 MiB beyond guest RAM by RSS (printed
beside each VM's own memory: RSS also counts, in full in every VM, the pages all VMs share);
10/10 running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit.vm import HELLO, KIT_BASE, in_netns, reexec_in_netns, registry_with_hello  # noqa: E402
STATE_DIR = Path(os.environ.get("STATE_DIR", ROOT / ".state"))
_IN_NS = "GANTRY_COLDSTART_NETNS"
FLOOR_TIMEOUT_S = 60.0
WARM_RUNS = 9  # warm starts, each right after a floor run of its own
SETTLE_S = 2.0  # memory is read this long after `running`, once boot-time allocations settle
OWN_TARGET_MIB = 30


def _ms(seconds: float | None) -> str:
    return "    -   " if seconds is None else f"{seconds * 1000:8.0f}"


async def _floor(kit, accel, work: Path, runs: int = 3) -> float:
    """Wall time of QEMU booting the floor initramfs to power-off, best of `runs`: the same
    command line as a real VM (machine, devices, accelerator) without disk or network."""
    from dataclasses import replace

    from nodes.agent.vmm.cmdline import VmLaunch, command_line
    from nodes.agent.vmm.spec import GuestSpec

    best = float("inf")
    for i in range(runs):
        vm_dir = work / f"floor-{i}"
        vm_dir.mkdir(parents=True)
        (vm_dir / "guest.sh").write_text("")
        launch = VmLaunch(name=f"floor-{i}", vm_dir=vm_dir, kit=replace(kit, initrd=kit.floor_initrd), accel=accel,
                          disk=None, vcpus=1, memory_mib=256, guest=GuestSpec(argv=["true"]), net=None)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*command_line(launch), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(proc.wait(), FLOOR_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            print(f"  floor run {i}: no power-off within {FLOOR_TIMEOUT_S:.0f} s (guest hung), see {vm_dir}/qemu.log")
            continue
        best = min(best, time.monotonic() - t0)
    if best == float("inf"):
        raise SystemExit("coldstart: the floor VM never powered off; the guest kernel hangs on this host")
    return best


def _time_launches(runtime, marks: dict[str, dict[str, float]]) -> None:
    """Wrap the vmm's launch to time QEMU start (exec until QMP answers) per VM."""
    launch = runtime.vmm.launch

    async def timed(l):
        t0 = time.time()
        pid = await launch(l)
        marks.setdefault(l.name, {}).update({"launch": t0, "launched": time.time()})
        return pid

    runtime.vmm.launch = timed


async def _timed_start(runtime, name: str, launches: dict[str, dict[str, float]]):
    """Start hello with its port and time each phase from the runtime's events."""
    from protocol.wire import ReplicaSpec

    marks: dict[str, float] = {}
    queue = runtime.subscribe()
    t0 = time.time()
    info = await runtime.start(ReplicaSpec(name=name, image=HELLO, traffic_port=8080))
    wall = time.time() - t0
    while not queue.empty():
        ev = queue.get_nowait()
        if ev.name == name:
            marks.setdefault(ev.phase if ev.state == "pulling" and ev.phase else ev.state, ev.ts)
    marks.update(launches.get(name, {}))
    return info, marks, t0, wall


def _breakdown(marks: dict[str, float], t0: float) -> dict[str, float | None]:
    def span(a: str, b: str) -> float | None:
        return marks[b] - marks[a] if a in marks and b in marks else None

    # Each phase runs from its first event to the next phase's first event. A cached image
    # reports `cached` only, so its pull and unpack are absent.
    return {
        "resolve (manifest)": span("resolve", "pull") if "pull" in marks else span("resolve", "cached"),
        "pull (blobs)": span("pull", "unpack"),
        "unpack (layers)": span("unpack", "disk"),
        "disk (ext4 + overlay + TAP/port)": span("disk", "launch") if "disk" in marks else span("cached", "launch"),
        "QEMU start (exec to QMP up)": span("launch", "launched"),
        "kernel + /init to workload start": span("launched", "starting"),
        "workload ready (health check)": span("starting", "running"),
        "total": marks["running"] - t0 if "running" in marks else None,
    }


def _memory(pid: int, kernel: Path):
    from nodes.agent.vmm.memory import memory_use

    return memory_use(pid, kernel)


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _verdict(kib: float) -> str:
    return f"(target < {OWN_TARGET_MIB} MiB): {'OK' if kib / 1024 < OWN_TARGET_MIB else 'MISSED'}"


def _print_memory(mem) -> None:
    print("\nQEMU memory, warm VM running hello (256 MiB guest), from /proc/<pid>/smaps:")
    print(f"  guest RAM resident                     {_mib(mem.guest_ram)}")
    print(f"  own memory beyond guest RAM            {_mib(mem.own)}  {_verdict(mem.own)}")
    print(f"    TCG translation cache {_mib(mem.tcg_cache)}, heap, device state and library data "
          f"{_mib(mem.own - mem.tcg_cache)}; what this VM adds, and frees when it stops")
    print(f"  shared page cache, one copy per host   {_mib(mem.files)}: guest kernel image {_mib(mem.kernel_image)}, "
          f"QEMU binary, libraries, initrd {_mib(mem.files - mem.kernel_image)}")
    # The issue's own measure. The page cache part of it is at least QEMU's binary and libraries,
    # ~28 MiB with Debian's qemu-system-x86_64, before any memory of the VM itself.
    print(f"  RSS beyond guest RAM                   {_mib(mem.rss_beyond_guest)}  {_verdict(mem.rss_beyond_guest)} "
          f"(own + shared, the shared pages counted in full in every VM)")
    print(f"  PSS beyond guest RAM                   {_mib(mem.pss_beyond_guest)}  (shared pages split among "
          f"the processes mapping them)")


async def main() -> int:
    from nodes.agent.runtime_build import build_runtime
    from protocol.wire import ReplicaSpec

    tmp = Path(tempfile.mkdtemp(prefix="gantry-coldstart-"))
    try:
        await asyncio.to_thread(registry_with_hello, tmp / "registry")
        data = tmp / "data"
        data.mkdir()
        # The bench's own registry on loopback is the operator's: trusted, as `make up` trusts its.
        runtime = build_runtime(data_dir=data, trusted_registries={"127.0.0.1:5000"}, kit_cache=KIT_BASE)
        kit, accel = await runtime.host()
        print(f"accelerator: {accel.name} ({accel.reason}); kernel {kit.kernel_version}")
        launches: dict[str, dict[str, float]] = {}
        _time_launches(runtime, launches)

        # The floor and the warm start alternate, each the best of its runs: this host's speed
        # drifts by tens of percent within minutes, and measuring one after the other would
        # charge the drift to whichever came second.
        rows = {}
        warm_walls, floors = [], []
        mem = None
        for label in ("cold", *["warm"] * WARM_RUNS):
            if label == "warm":
                floors.append(await _floor(kit, accel, tmp / f"floor-{len(floors)}", runs=1))
            name = f"bench-{label}-{len(warm_walls)}"
            info, marks, t0, wall = await _timed_start(runtime, name, launches)
            if label == "warm":
                warm_walls.append(wall)
                if mem is None:
                    await asyncio.sleep(SETTLE_S)
                    mem = await asyncio.to_thread(_memory, info.pid, kit.kernel.absolute())
            if label not in rows or wall < rows[label][1]:
                rows[label] = (_breakdown(marks, t0), wall)
            await runtime.remove(name)
        floor = min(floors)
        print(f"floor (same kernel, /init only powers off): {floor * 1000:.0f} ms, best of "
              f"{', '.join(f'{f * 1000:.0f}' for f in floors)}")
        print(f"\n{'phase (ms)':36} {'cold':>8} {'warm':>8}   (kernel to /init alone is about the floor)")
        for key in rows["cold"][0]:
            print(f"{key:36} {_ms(rows['cold'][0][key])} {_ms(rows['warm'][0][key])}")
        print(f"{'wall (start() call)':36} {_ms(rows['cold'][1])} {_ms(rows['warm'][1])}")
        warm = rows["warm"][1]
        print(f"warm runs (ms): {', '.join(f'{w * 1000:.0f}' for w in warm_walls)}; the table shows the best")
        # Each warm start against the floor run just before it: a pair shares the host's speed
        # of the moment, so the median pair ratio is what the target is judged on; best against
        # best is printed beside it (a lone lucky floor run moves it by tens of percent here).
        ratios = sorted(w / f for w, f in zip(warm_walls, floors))
        median = ratios[len(ratios) // 2]
        print(f"\nwarm start / floor, per pair (each warm start after its own floor run): "
              f"{', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"warm start = {median:.2f}x the floor, median of {len(ratios)} pairs (target <= 1.5x): "
              f"{'OK' if median <= 1.5 else 'MISSED'}; best vs best {warm * 1000:.0f} / {floor * 1000:.0f} ms "
              f"= {warm / floor:.2f}x")

        _print_memory(mem)

        names = [f"bench-many-{i}" for i in range(10)]
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(runtime.start(ReplicaSpec(name=n, image=HELLO, traffic_port=8080)) for n in names), return_exceptions=True
        )
        took = time.monotonic() - t0
        running = sum(1 for r in results if not isinstance(r, BaseException) and r.state == "running")
        print(f"\nten VMs started at once: {running}/10 running in {took:.1f} s (target 10/10): "
              f"{'OK' if running == 10 else 'MISSED'}")
        await asyncio.sleep(SETTLE_S)
        mems = [await asyncio.to_thread(_memory, r.pid, kit.kernel.absolute())
                for r in results if not isinstance(r, BaseException)]
        if mems:
            def mean(attr: str) -> str:
                return _mib(sum(getattr(m, attr) for m in mems) / len(mems))

            own_max = max(m.own for m in mems)
            print(f"  with {len(mems)} running, beyond guest RAM per VM (mean): own {mean('own')} (largest "
                  f"{_mib(own_max)} {_verdict(own_max)}), PSS {mean('pss_beyond_guest')}, RSS {mean('rss_beyond_guest')}")
        for r in results:
            if isinstance(r, BaseException):
                print(f"  failed: {r}")
        await asyncio.gather(*(runtime.remove(n) for n in names), return_exceptions=True)
        await runtime.close()
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("coldstart: needs root (network namespace, TAPs, QEMU)", file=sys.stderr)
        sys.exit(1)
    if not in_netns(_IN_NS):
        sys.exit(reexec_in_netns(__file__, _IN_NS))
    sys.exit(asyncio.run(main()))
