"""The meter cannot be stopped from inside the guest (issue 23), in a real microVM.

A replica's end is what stops its meter on the plane, so the agent may report `stopped` or
`failed` only once the VM's QEMU is gone. The guest's status channel is the guest's word: a
root workload writes a `final` there itself (tests/agent/forge.py copies /init's descriptor of
the port) and carries on running. The agent must then stop the VM, and report the end only
after QEMU has exited.

Real parts: the daemon's Supervisor over a real MicroVmRuntime, real QEMU (TCG), the real guest
kit and /init, and the agent's real LinuxNetwork, all of the VM's network inside a namespace
this test made, on TEST-NET addresses (198.51.100.0/24, resolver 192.0.2.53 that nothing asks).
Only the image store is a stub: it hands out a small ext4 disk (busybox and the forger) built
here, as the images tests' registry would after a pull.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodes.agent.network import LinuxNetwork, NetworkConfig
from nodes.agent.events import RuntimeEvent
from nodes.agent.runtime import MicroVmRuntime
from nodes.agent.supervisor import Supervisor
from nodes.agent.vmm.qemu import QemuVm, alive
from protocol.wire import Desired, DesiredReplica, ReplicaSpec, ReplicaStatus
from tests.agent.conftest_vmm import BUSYBOX, KIT_CACHE
from tests.agent.fakes import FakeImageConfig
from tests.agent.forge import NOTE, program

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(600)]

NAME = "meter-forged-final"
BARRIER = "barrier"  # no VM: an event of its name only marks a place in the reporter's queue
# What /init writes when a workload exits 0 (nodes/agent/guest/init): the end record. (Records
# that are not /init's, which a guest may write too, are tests/agent/test_status_channel.py's.)
FORGED = b'{"event":"final","code":0,"attempts":1,"stopped":false,"ts":0}\n'
CONFIG = NetworkConfig(subnet=ipaddress.IPv4Network("198.51.100.0/24"), nameservers=("192.0.2.53",))
TERMINAL = ("stopped", "failed")


@pytest.fixture(scope="module")
def forge_disk(tmp_path_factory) -> Path:
    """busybox, and /bin/forge: writes FORGED on /init's status port, then never exits."""
    root = tmp_path_factory.mktemp("forge-root")
    (root / "bin").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "echo", "sleep"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "bin" / "forge").write_bytes(program(FORGED))
    (root / "bin" / "forge").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    disk = root.parent / "forge.ext4"
    subprocess.run(["truncate", "-s", "16M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(disk)], check=True)
    return disk


class DiskImages:
    """The image store's interface over one prepared disk (no registry: the images tests own that)."""

    def __init__(self, disk: Path):
        self.disk = disk

    async def ensure_disk(self, ref, *, credentials=None, tenant=None, progress=None):
        return SimpleNamespace(ref=ref, digest="sha256:" + "0" * 64, path=self.disk,
                               config=FakeImageConfig(env={"PATH": "/bin"}))

    async def create_overlay(self, disk, dest: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.path), "-F", "raw", str(dest))
        assert await proc.wait() == 0

    async def evict(self, *, in_use):
        return []


def _kill_under(path: Path) -> None:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), 9)
        except (OSError, ProcessLookupError):
            pass


async def _eventually(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.1)
    return value


def test_a_guest_that_writes_final_while_alive_is_stopped_before_its_end_is_reported(
        tmp_path, node_netns, vmm_kit, vmm_accel, forge_disk):
    vm_dir = tmp_path / "data" / "vms" / NAME
    sent: list[tuple[str, str, bool]] = []  # (state, reason, was QEMU alive when it was sent)
    barrier_reported = asyncio.Event()

    async def send(message) -> bool:
        if isinstance(message, ReplicaStatus) and message.report.replica_id == BARRIER:
            barrier_reported.set()
        elif isinstance(message, ReplicaStatus):
            sent.append((message.report.state, message.report.reason, await asyncio.to_thread(alive, vm_dir)))
        return True

    async def kit(_cache):
        return vmm_kit

    async def accel(_cache, _kit):
        return vmm_accel

    async def scenario() -> None:
        network = LinuxNetwork(CONFIG, tmp_path / "network", netns=node_netns.name)
        runtime = MicroVmRuntime(tmp_path / "data", images=DiskImages(forge_disk), network=network,
                                 kit_cache=KIT_CACHE, netns=node_netns.name, kit_provider=kit, accel_provider=accel,
                                 vmm=QemuVm(netns=node_netns.name), boot_timeout=300, stop_timeout=10)
        supervisor = Supervisor(runtime, send)
        running = asyncio.create_task(supervisor.run())
        spec = ReplicaSpec(name=NAME, image="forge", entrypoint=["/bin/sh", "-c"],
                           args=["echo workload up; exec /bin/forge"], vcpus=1, memory_mib=128)
        supervisor.apply_desired(Desired(replicas=[DesiredReplica(replica_id=NAME, spec=spec)]))
        try:
            async def forged():
                path = vm_dir / "stdout.raw"
                return await asyncio.to_thread(path.exists) and NOTE in await asyncio.to_thread(path.read_bytes)

            await _eventually(forged, timeout=300, what="the workload to forge its final")
            assert await asyncio.to_thread(alive, vm_dir), "the forger never exits: its VM lives on"

            async def ended():
                return any(state in TERMINAL for state, _, _ in sent)

            await _eventually(ended, timeout=90, what="the replica's end to be reported")
            # An event after every other: once the reporter passed it on, it has passed on all
            # it had, and no later report may have revived the replica.
            runtime._emit(RuntimeEvent(BARRIER, "stopped", time.time()))
            await asyncio.wait_for(barrier_reported.wait(), 30)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await runtime.close()

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(QemuVm().stop(vm_dir, timeout=0))
        _kill_under(tmp_path)

    early = [(state, reason) for state, reason, live in sent if state in TERMINAL and live]
    assert not early, f"reported ended while its QEMU still ran (the meter stops there): {early}; all: {sent}"
    states = [state for state, _, _ in sent]
    # While its QEMU lived after the forged end, the replica was `stopping`, and said why.
    assert any(state == "stopping" and "reported its end" in reason and live for state, reason, live in sent), sent
    assert states[-1] in TERMINAL, sent
    assert not alive(vm_dir)
    # The agent ended the VM (the forger never exits, and never powers anything off): the power
    # button made /init stop the workload and write its own end record, with `stopped` true.
    records = []
    for line in (vm_dir / "status.raw").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            continue
    finals = [r for r in records if isinstance(r, dict) and r.get("event") == "final" and type(r.get("code")) is int]
    assert finals[0]["ts"] == 0, finals  # the forged one came first
    assert len(finals) == 2 and finals[-1]["stopped"] is True, finals
