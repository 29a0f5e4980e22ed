"""Sequential write and read MB/s of a volume inside a microVM, beside the VM's root disk and the
host writing the same file directly, in one run (docs/runtime.md, "Volumes", says what the
figures mean).

Per run, one VM (the test kit, TCG here unless the probe finds KVM) with a fresh volume made by
the real backend (sparse ext4, attached as the agent attaches it: virtio-blk, cache=none where
O_DIRECT works) and a root disk that is a qcow2 overlay on a raw ext4 base, as every VM's is.
Inside the guest busybox dd writes SIZE MiB with conv=fsync and reads them back with
iflag=direct (no page cache on either side of the guest's block layer), first on the volume,
then on the root disk. On the host GNU dd does the same to a file in the same directory the
volumes live in. Each figure: min / median / max MB/s of RUNS runs (BENCH_VOLUME_RUNS,
default 3; BENCH_VOLUME_MIB, default 256).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit import kill_under, say  # noqa: E402
from tests.agent.conftest_vmm import KIT_CACHE, make_base_disk, overlay, wait_for_event, wait_gone  # noqa: E402

RUNS = int(os.environ.get("BENCH_VOLUME_RUNS", "3"))
SIZE_MIB = int(os.environ.get("BENCH_VOLUME_MIB", "256"))
# One dd pair per disk, each timed on the guest's uptime clock (Debian's busybox dd prints no
# rate): "== /vol write START END" lines on stderr.
GUEST = (
    't() { read -r up _ </proc/uptime; T=$up; }; '
    "for d in /vol /bench; do mkdir -p $d; "
    f"t; s=$T; dd if=/dev/zero of=$d/f bs=1M count={SIZE_MIB} conv=fsync 2>/dev/null; t; "
    'echo "== $d write $s $T" >&2; '
    f"t; s=$T; dd if=$d/f of=/dev/null bs=1M iflag=direct 2>/dev/null; t; "
    'echo "== $d read $s $T" >&2; rm -f $d/f; sync; done'
)


def rates(text: str) -> dict[str, float]:
    """{"/vol write": MB/s, ...} from the guest's "== what start end" lines."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "==":
            seconds = max(float(parts[4]) - float(parts[3]), 0.01)
            out[f"{parts[1]} {parts[2]}"] = SIZE_MIB * (1 << 20) / 1e6 / seconds
    return out


def host_rates(directory: Path) -> dict[str, float]:
    f = directory / "host-bench"
    out = {}
    for what, argv in (("write", ["dd", "if=/dev/zero", f"of={f}", "bs=1M", f"count={SIZE_MIB}", "conv=fsync"]),
                       ("read", ["dd", f"if={f}", "of=/dev/null", "bs=1M", "iflag=direct"])):
        err = subprocess.run(argv, capture_output=True, text=True, check=True).stderr
        m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", err)
        out[f"host {what}"] = int(m.group(1)) / 1e6 / float(m.group(2))
    f.unlink()
    return out


def spread(samples: list[float]) -> str:
    return f"{min(samples):8.1f} / {statistics.median(samples):8.1f} / {max(samples):8.1f}"


async def main(work: Path) -> None:
    from nodes.agent.guest.kit import ensure_kit
    from nodes.agent.vmm.accel import probe_accel
    from nodes.agent.vmm.cmdline import GuestVolume, VmLaunch, volume_serial
    from nodes.agent.vmm.qemu import QemuVm
    from nodes.agent.vmm.spec import GuestSpec
    from nodes.agent.volumes import FileVolumes
    from protocol.wire import VolumeMount

    KIT_CACHE.mkdir(parents=True, exist_ok=True)
    kit = await ensure_kit(KIT_CACHE)
    accel = await probe_accel(KIT_CACHE, kit)
    (work / "rootfs").mkdir()
    base = make_base_disk(work / "rootfs")
    # Room on the root disk for the same file (the test image is 32 MiB).
    subprocess.run(["truncate", "-s", f"{SIZE_MIB * 2 + 256}M", str(base)], check=True)
    subprocess.run(["resize2fs", "-f", str(base)], check=True, capture_output=True)
    volumes = FileVolumes(work / "volumes")

    figures: dict[str, list[float]] = {}
    for run in range(RUNS):
        volume_id = f"bench-{run}"
        attach = await volumes.ensure(VolumeMount(volume_id, max(1, -(-SIZE_MIB * 2 // 1024)), "/vol"))
        name = f"bench-{run}"
        launch = VmLaunch(name=name, vm_dir=work / name, kit=kit, accel=accel,
                          disk=overlay(base, work / f"{name}.qcow2"), vcpus=1, memory_mib=512,
                          guest=GuestSpec(argv=["sh", "-c", GUEST], env={"PATH": "/bin"}, max_restarts=0),
                          volumes=(GuestVolume(volume_serial(0), attach.source, "/vol", cache=attach.cache),))
        await QemuVm().launch(launch)
        events = await wait_for_event(launch.vm_dir, "final", timeout=600)
        await wait_gone(launch.vm_dir)
        err = (launch.vm_dir / "stderr.raw").read_text(errors="replace")
        if events[-1].get("code") != 0:
            raise SystemExit(f"the guest failed (code {events[-1].get('code')}): {err[-2000:]}")
        guest = rates(err)
        if len(guest) != 4:
            raise SystemExit(f"dd in the guest said what this bench cannot read: {err[-2000:]}")
        got = {**guest, **await asyncio.to_thread(host_rates, volumes.root)}
        for what, value in got.items():
            figures.setdefault(what, []).append(value)
        await volumes.delete(volume_id)
    names = {"/vol write": "volume write", "/vol read": "volume read", "/bench write": "root disk write",
             "/bench read": "root disk read", "host write": "host file write", "host read": "host file read"}
    say(f"sequential {SIZE_MIB} MiB, dd bs=1M, {accel.name}, volume cache={attach.cache}; "
        f"MB/s min / median / max of {RUNS} runs:")
    for key, label in names.items():
        if key in figures:
            say(f"  {label:16} {spread(figures[key])}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="gantry-volume-bench-", dir=os.environ.get("BENCH_VOLUME_DIR")) as tmp:
        try:
            asyncio.run(main(Path(tmp)))
        finally:
            kill_under(Path(tmp))
