"""QEMU microVMs under TCG: the guest spec reaches the workload, streams stay apart, crash loops
end in `final`, VMs outlive their launcher, and stop is graceful with a kill fallback."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.vmm import qmp
from nodes.agent.vmm.accel import Accel, probe_accel
from nodes.agent.vmm.cmdline import VmFiles
from nodes.agent.vmm.memory import memory_use
from nodes.agent.vmm.qemu import QemuVm, alive, read_pid
from nodes.agent.vmm.spec import GuestSpec, render
from tests.agent.conftest_vmm import *  # noqa: F401,F403
from tests.agent.conftest_vmm import REPO, TEST_UID, status_events, wait_for_event, wait_gone

TRICKY = ["it's", 'a "quote"', "$(echo no)", "`no`", "back\\slash", "new\nline", "*", "", "-n"]


def test_rendered_spec_survives_shell_quoting(tmp_path):
    """The fragment /init sources gives back argv and env byte for byte, whatever they hold."""
    spec = GuestSpec(argv=["prog", *TRICKY], env={"A": TRICKY[0], "B": "x\ny $HOME"}, workdir="/srv/my app")
    fragment = tmp_path / "spec.sh"
    fragment.write_text(render(spec, hostname="h", root_dev=None, net=None))
    script = f'. {fragment}; eval "set -- $GANTRY_ARGV"; for a; do printf "%s\\0" "$a"; done; printf "%s\\0" "$GANTRY_WORKDIR"; eval "env -i $GANTRY_ENV env -0"'
    out = subprocess.run(["/bin/busybox", "sh", "-c", script], capture_output=True, check=True).stdout
    parts = out.decode().split("\0")
    assert parts[: len(spec.argv)] == spec.argv
    assert parts[len(spec.argv)] == "/srv/my app"
    assert {"A=it's", "B=x\ny $HOME"} <= set(parts[len(spec.argv) + 1 :])


def test_render_rejects_what_no_guest_can_run():
    with pytest.raises(ValueError, match="nothing to run"):
        render(GuestSpec(argv=[]), hostname="h", root_dev=None, net=None)
    with pytest.raises(ValueError, match="variable name"):
        render(GuestSpec(argv=["x"], env={"A=B": "1"}), hostname="h", root_dev=None, net=None)


@pytest.mark.vm
async def test_workload_gets_spec_and_streams_stay_apart(vm_launch):
    """argv, env (secret included), workdir and user reach the workload; stdout and stderr land
    in their own files in order, with no kernel console line in either; /dev holds the usual
    nodes only (no disk, no gantry port); exit 0 powers off."""
    script = 'echo "hello $GREETING"; echo "err 1" >&2; id -u; pwd; echo "$TOKEN" "$1"; echo "err 2" >&2; ls /dev; seq 1 200'
    launch = vm_launch(
        "streams", ["sh", "-c", script, "sh", "arg one"],
        env={"PATH": "/bin", "GREETING": "world", "TOKEN": "s3cr3t 'quoted'"},
        workdir="/srv/app", user="app",
    )  # fmt: skip
    pid = await QemuVm().launch(launch)
    assert pid == await asyncio.to_thread(read_pid, launch.vm_dir)
    events = await wait_for_event(launch.vm_dir, "final")
    await wait_gone(launch.vm_dir)

    files = VmFiles(launch.vm_dir)
    dev = ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    expected = ["hello world", str(TEST_UID), "/srv/app", "s3cr3t 'quoted' arg one", *dev, *map(str, range(1, 201))]
    assert files.stdout.read_text().splitlines() == expected
    assert files.stderr.read_text().splitlines() == ["err 1", "err 2"]
    assert [(e["event"], e.get("code")) for e in events] == [("start", None), ("exit", 0), ("final", 0)]
    assert events[-1]["stopped"] is False
    # The secret reached the workload through the spec file, which went with the launch.
    assert not files.guest_sh.exists() and not (launch.vm_dir / "guest.json").exists()
    assert "s3cr3t" not in (files.log.read_text())


@pytest.mark.vm
async def test_guest_gets_the_fast_boot_options_and_its_mounts(vm_launch):
    """The kernel options the vmm picks for boot speed reach the guest (CPU-flaw mitigations off
    only under TCG), /init's fstabs give the workload proc, sysfs and a /dev with devpts and
    shm, and event times are epoch seconds (read from the guest RTC, no `date` fork)."""
    # The spec (secrets included) stays out of the workload's sysfs, even for root.
    script = "cat /proc/cmdline /proc/mounts; ls /sys/firmware/qemu_fw_cfg >&2; id -u >&2"
    launch = vm_launch("bootopts", ["sh", "-c", script], user="0")
    started = time.time()
    await QemuVm().launch(launch)
    events = await wait_for_event(launch.vm_dir, "final")
    await wait_gone(launch.vm_dir)

    cmdline, *mounts = VmFiles(launch.vm_dir).stdout.read_text().splitlines()
    options = cmdline.split()
    assert "init_on_alloc=0" in options
    assert ("mitigations=off" in options) == (launch.accel.name == "tcg")
    fstypes = {fields[1]: fields[2] for fields in (line.split() for line in mounts)}
    assert fstypes == {"/": "ext4", "/proc": "proc", "/sys": "sysfs", "/sys/firmware/qemu_fw_cfg": "tmpfs",
                       "/dev": "tmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs"}
    assert VmFiles(launch.vm_dir).stderr.read_text().splitlines() == ["0"]  # root, and fw_cfg is empty
    assert [e["event"] for e in events] == ["start", "exit", "final"]
    assert started - 5 < events[0]["ts"] < time.time() + 5


@pytest.mark.vm
async def test_crash_loop_restarts_with_backoff_then_final(vm_launch, tmp_path, monkeypatch):
    launch = vm_launch("crash", ["sh", "-c", "echo attempt; echo boom >&2; exit 3"], max_restarts=2, backoff_s=0.2)
    # A relative VM dir (and disk) works: QEMU runs in the VM dir, the agent wherever it was started.
    monkeypatch.chdir(tmp_path)
    launch = dataclasses.replace(launch, vm_dir=Path("crash"), disk=Path(launch.disk.name))
    await QemuVm().launch(launch)
    assert await asyncio.to_thread(alive, tmp_path / "crash")
    events = await wait_for_event(launch.vm_dir, "final")
    await wait_gone(launch.vm_dir)
    assert [(e["event"], e.get("attempt"), e.get("code")) for e in events] == [
        ("start", 1, None), ("exit", 1, 3), ("start", 2, None), ("exit", 2, 3), ("start", 3, None), ("exit", 3, 3),
        ("final", None, 3),
    ]  # fmt: skip
    assert [e.get("restart_in_s") for e in events if e["event"] == "exit"] == [0.2, 0.4, None]
    assert events[-1]["attempts"] == 3
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 30
    assert VmFiles(launch.vm_dir).stderr.read_text() == "boom\n" * 3


@pytest.mark.vm
async def test_stop_during_crash_loop_is_graceful(vm_launch):
    """The power button still works after restarts (their cleanup spares its watcher) and cuts
    the backoff short; a daemon left by an attempt does not outlive it."""
    script = (
        'if [ -f /srv/app/last ] && kill -0 "$(cat /srv/app/last)" 2>/dev/null; then echo leftover; fi; '
        "sleep 1000 & echo $! >/srv/app/last; echo started; exit 1"
    )
    launch = vm_launch("looping", ["sh", "-c", script], max_restarts=10, backoff_s=0.5)
    await QemuVm().launch(launch)
    await wait_for_event(launch.vm_dir, "exit", count=2)
    await QemuVm().stop(launch.vm_dir, timeout=30)
    events = status_events(launch.vm_dir)
    # A final event: the guest reacted to the power button (a kill at the timeout leaves none).
    # Code 1 when the press lands in the backoff (almost always), 143 if it catches a restart.
    assert events[-1]["event"] == "final" and events[-1]["stopped"] is True and events[-1]["code"] in (1, 143)
    lines = VmFiles(launch.vm_dir).stdout.read_text().splitlines()
    assert lines.count("started") >= 2 and "leftover" not in lines


@pytest.mark.vm
async def test_init_failure_is_reported_with_its_reason(vm_launch):
    """What /init cannot do (here: a user the image does not have) ends the VM with code 125,
    the reason in the final event and on stderr, where the runtime takes a failure reason from."""
    launch = vm_launch("ghost", ["true"], user="ghost")
    await QemuVm().launch(launch)
    events = await wait_for_event(launch.vm_dir, "final")
    await wait_gone(launch.vm_dir)
    assert [e["event"] for e in events] == ["final"]
    assert events[0]["code"] == 125 and "user ghost not found" in events[0]["error"]
    assert "user ghost not found" in VmFiles(launch.vm_dir).stderr.read_text()


LAUNCHER = """
import asyncio, json, pickle, sys
from nodes.agent.vmm.qemu import QemuVm
launch = pickle.loads(bytes.fromhex(sys.argv[1]))
pid = asyncio.run(QemuVm().launch(launch))
print(pid, flush=True)
import time; time.sleep(3600)
"""


@pytest.mark.vm
async def test_vm_outlives_killed_launcher_and_stops_gracefully(vm_launch):
    import pickle

    ticker = 'trap "echo got TERM; exit 0" TERM; i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'
    launch = vm_launch("survivor", ["sh", "-c", ticker])
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCHER, pickle.dumps(launch).hex(),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    pid = int(await asyncio.wait_for(launcher.stdout.readline(), 60))
    launcher.send_signal(signal.SIGKILL)
    await launcher.wait()

    await wait_for_event(launch.vm_dir, "start")
    stdout = VmFiles(launch.vm_dir).stdout
    before = len((await asyncio.to_thread(stdout.read_text)).splitlines())
    deadline = time.monotonic() + 30
    while len((await asyncio.to_thread(stdout.read_text)).splitlines()) <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(stdout.read_text().splitlines()) > before, "it stopped ticking with its launcher gone"
    assert await asyncio.to_thread(alive, launch.vm_dir)
    assert (await qmp.command(VmFiles(launch.vm_dir).qmp, "query-status"))["status"] == "running"
    mem = await asyncio.to_thread(memory_use, pid, launch.kit.kernel.absolute())
    # PVH boot: the kernel is mapped from the kit's file (one page-cache copy for every VM),
    # not copied into this QEMU's own memory.
    assert mem.kernel_image > 1024 and mem.files >= mem.kernel_image
    assert 0 < mem.guest_ram <= 256 * 1024 and mem.own > 0 and mem.rss > mem.guest_ram + mem.own
    print(f"QEMU RSS {mem.rss} KiB: guest RAM {mem.guest_ram}, own {mem.own}, kernel image {mem.kernel_image}")

    await QemuVm().stop(launch.vm_dir, timeout=20)
    events = status_events(launch.vm_dir)
    # Powered off by itself (a kill at the timeout leaves no final event); bench/vm_stop.py times it.
    assert events[-1] == {**events[-1], "event": "final", "code": 0, "stopped": True}
    assert stdout.read_text().splitlines()[-1] == "got TERM"
    assert not await asyncio.to_thread(alive, launch.vm_dir)


@pytest.mark.vm
async def test_stop_kills_a_guest_that_ignores_the_power_button(vm_launch):
    launch = vm_launch("stubborn", ["sh", "-c", 'trap "" TERM; echo up; while :; do sleep 1; done'], stop_grace_s=600)
    # Deeper than a unix socket path allows (107 bytes): QMP must still work.
    launch = dataclasses.replace(launch, vm_dir=launch.vm_dir / ("deep-" * 20) / "vm")
    assert len(str(VmFiles(launch.vm_dir).qmp)) > 108
    await QemuVm().launch(launch)
    assert (await qmp.command(VmFiles(launch.vm_dir).qmp, "query-status"))["status"] == "running"
    await wait_for_event(launch.vm_dir, "start")
    while "up" not in await asyncio.to_thread(VmFiles(launch.vm_dir).stdout.read_text):
        await asyncio.sleep(0.05)  # the trap is set: a press before it would kill the shell
    await QemuVm().stop(launch.vm_dir, timeout=2)
    assert not await asyncio.to_thread(alive, launch.vm_dir)
    events = status_events(launch.vm_dir)
    assert "final" not in [e["event"] for e in events]  # killed once its grace ran out, not powered off
    await QemuVm().stop(launch.vm_dir, timeout=2)  # idempotent: nothing left to stop
    assert status_events(launch.vm_dir) == events


@pytest.mark.vm
async def test_launch_reports_why_qemu_did_not_start(vm_launch, tmp_path):
    launch = vm_launch("broken", ["true"], disk=False)
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\xff" * 508)
    launch = dataclasses.replace(launch, disk=bad)
    with pytest.raises(AgentError, match="QEMU did not start.*bad.qcow2"):
        await QemuVm().launch(launch)
    assert not await asyncio.to_thread(alive, launch.vm_dir)


@pytest.mark.vm
async def test_probe_accel_decides_once_per_boot(tmp_path, vmm_kit):
    accel = await probe_accel(tmp_path, vmm_kit)
    assert accel.name in ("kvm", "tcg") and accel.reason.startswith("kvm")
    if not Path("/dev/kvm").exists():
        assert accel.name == "tcg"
    cache = json.loads((tmp_path / "accel.json").read_text())
    assert cache["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    # A second call reads the cache instead of probing again.
    (tmp_path / "accel.json").write_text(json.dumps({**cache, "reason": "from cache"}))
    assert await probe_accel(tmp_path, vmm_kit) == Accel(accel.name, "from cache")
    # A cache from another boot of the host is probed afresh.
    (tmp_path / "accel.json").write_text(json.dumps({**cache, "boot_id": "another boot", "reason": "stale"}))
    again = await probe_accel(tmp_path, vmm_kit)
    assert again.name == accel.name and again.reason.startswith("kvm") and again.reason != "stale"


@pytest.mark.vm
@pytest.mark.netns
async def test_guest_network_is_configured_from_the_spec(vm_launch, netns_factory):
    """In a namespace of the test's own: a bridge holding the gateway address and the VM's TAP.
    QEMU runs inside it (launched from there); the guest pings its gateway by the route /init set."""
    import pickle

    from nodes.agent.network import VmNetwork

    ns = netns_factory()
    for cmd in (
        "link add br0 type bridge", "addr add 192.0.2.1/24 dev br0", "link set br0 up",
        "tuntap add mode tap name gttest0", "link set gttest0 master br0", "link set gttest0 up",
    ):  # fmt: skip
        await asyncio.to_thread(ns.run, "ip", *cmd.split())
    net = VmNetwork(tap="gttest0", mac="52:54:00:12:34:56", address=ipaddress.IPv4Address("192.0.2.10"),
                    gateway=ipaddress.IPv4Address("192.0.2.1"), prefixlen=24,
                    nameservers=("192.0.2.53", "198.51.100.53"))  # fmt: skip
    script = ("hostname; ip -4 -o addr show dev eth0 | grep -o '192[^ ]*'; ip route | grep default; "
              "ping -c 1 -W 10 192.0.2.1 >/dev/null && echo reached gateway; cat /etc/resolv.conf")
    launch = dataclasses.replace(vm_launch("netvm", ["sh", "-c", script]), net=net)
    launcher = await asyncio.to_thread(
        ns.spawn, "env", f"PYTHONPATH={REPO}", sys.executable, "-c", LAUNCHER, pickle.dumps(launch).hex(), cwd=REPO
    )
    events = await wait_for_event(launch.vm_dir, "final")
    launcher.kill()
    assert events[-1]["code"] == 0, VmFiles(launch.vm_dir).stderr.read_text()
    assert VmFiles(launch.vm_dir).stdout.read_text().splitlines() == [
        "netvm", "192.0.2.10/24", "default via 192.0.2.1 dev eth0 ", "reached gateway",
        "nameserver 192.0.2.53", "nameserver 198.51.100.53",
    ]  # fmt: skip


@pytest.mark.vm
async def test_workload_kill_zero_reaches_only_its_own_processes(vm_launch):
    """A workload signalling its process group (`kill 0`, a common cleanup trap) neither stops
    the VM nor kills the power-button watcher: it runs in a session of its own."""
    script = 'trap "" TERM; kill -TERM 0; sleep 3; echo alive; sleep 1000'
    # A 1 s grace: had /init taken the signal as a stop, the workload would be killed before
    # it says it is alive.
    launch = vm_launch("killzero", ["sh", "-c", script], stop_grace_s=1)
    await QemuVm().launch(launch)
    await wait_for_event(launch.vm_dir, "start")
    stdout = VmFiles(launch.vm_dir).stdout
    deadline = time.monotonic() + 30
    while "alive" not in await asyncio.to_thread(stdout.read_text) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert stdout.read_text().splitlines() == ["alive"]
    assert [e["event"] for e in status_events(launch.vm_dir)] == ["start"]  # /init did not start stopping
    await QemuVm().stop(launch.vm_dir, timeout=30)
    # A final event saying stopped: the power button watcher was there (a kill leaves none).
    assert status_events(launch.vm_dir)[-1]["stopped"] is True
