"""MicroVmRuntime with GPUs: a spec that asks for GPUs never boots without them, a simulated
node's VM boots capped and says so, a real node's VM gets the q35 machine, GPUs go back when
the VM ends, and an agent killed between binding and QEMU recovers the binding.

No VM boots and no network device is made (FakeNetwork, a recording vmm): "binding" writes only
the fake sysfs tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.gpu.host import GpuHost
from nodes.agent.runtime import MicroVmRuntime
from protocol.wire import ReplicaSpec
from tests.agent.fakes import FakeImageConfig, FakeImageStore, FakeNetwork, FakeVmm, fake_accel, fake_kit
from tests.agent.sysfs_trees import snapshot, tree
from tests.agent.test_runtime import wait_state
from tests.agent.test_vfio import H100, SWITCHES

REPO = Path(__file__).resolve().parents[2]
SH = FakeImageConfig(entrypoint=["/bin/sh", "-c"], cmd=["sleep 30"], env={"PATH": "/usr/bin:/bin"})


class RecordingVmm(FakeVmm):
    """FakeVmm that keeps every VmLaunch it was given, machine included."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = []

    async def launch(self, launch) -> int:
        self.launches.append(launch)
        return await super().launch(launch)


def runtime(tmp_path, gpus, vmm=None):
    return MicroVmRuntime(tmp_path / "data", images=FakeImageStore(tmp_path / "images", {"sh": SH}),
                          network=FakeNetwork(), vmm=vmm or RecordingVmm(), kit_provider=fake_kit,
                          accel_provider=fake_accel, poll_interval=0.02, gpus=gpus)


def drivers(sysfs, bdfs):
    return [sysfs.link_name(sysfs.pci(b, "driver")) for b in bdfs]


async def adrivers(sysfs, bdfs):
    return await asyncio.to_thread(drivers, sysfs, bdfs)


async def test_gpus_asked_of_a_node_without_any_fail_with_a_reason_and_never_boot(tmp_path):
    vmm = RecordingVmm()
    rt = runtime(tmp_path, None, vmm)
    with pytest.raises(AgentError) as err:
        await rt.start(ReplicaSpec(name="g", image="sh", gpu_bdfs=[H100[0]]))
    assert err.value.permanent and "this node has no GPUs to give" in err.value.message
    assert "never boots without the GPUs" in err.value.message
    assert vmm.launches == [] and (await rt.get("g")).state == "failed"
    await rt.close()


async def test_a_gpu_this_node_does_not_have_fails_and_never_boots(tmp_path):
    vmm = RecordingVmm()
    sysfs = await asyncio.to_thread(tree, tmp_path)
    rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data", simulated="8xH100"), vmm)
    with pytest.raises(AgentError, match="this node has no GPU at 0000:77:00.0"):
        await rt.start(ReplicaSpec(name="g", image="sh", gpu_bdfs=["0000:77:00.0"]))
    assert vmm.launches == []
    await rt.close()


async def test_a_simulated_board_binds_its_gpus_and_boots_capped_saying_so(tmp_path):
    vmm = RecordingVmm()
    sysfs = await asyncio.to_thread(tree, tmp_path)
    before = await asyncio.to_thread(snapshot, sysfs.root)
    rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data", simulated="8xH100"), vmm)
    info = await rt.start(ReplicaSpec(name="big", image="sh", gpu_bdfs=H100, vcpus=128, memory_mib=1600 * 1024))
    assert info.state == "running"
    assert info.reason.startswith("simulated 8xH100: 8 GPU(s) bound on the simulated board; the VM runs without them")
    (launch,) = vmm.launches
    assert launch.machine is None  # no passthrough: a microVM
    assert launch.vcpus == len(os.sched_getaffinity(0)) and launch.vcpus < 128
    assert 256 <= launch.memory_mib < 1600 * 1024 and f"of {1600 * 1024} MiB" in info.reason
    assert set(await adrivers(sysfs, H100 + SWITCHES)) == {"vfio-pci"}  # the real bind, on the simulated board
    await rt.stop("big", timeout=2)
    assert await asyncio.to_thread(snapshot, sysfs.root) == before and sysfs.resets == H100 + SWITCHES
    await rt.close()


async def test_a_real_node_boots_the_q35_machine_with_its_devices(tmp_path):
    vmm = RecordingVmm()
    sysfs = await asyncio.to_thread(tree, tmp_path)
    kit = {"driver_version": "550.163.01", "kernel_version": "6.1", "image": str(tmp_path / "gpukit.img"),
           "supported": {"0x2330": True}}
    rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data", kit=lambda: kit), vmm)
    info = await rt.start(ReplicaSpec(name="one", image="sh", gpu_bdfs=[H100[1]], vcpus=16, memory_mib=4096))
    assert info.state == "running" and info.reason == ""
    (launch,) = vmm.launches
    assert [d.bdf for d in launch.machine.devices] == [H100[1]] and launch.machine.gpu_kit == Path(kit["image"])
    assert launch.machine.nodes[0].host_node == 0 and launch.vcpus == 16
    await rt.stop("one", timeout=2)
    assert await adrivers(sysfs, [H100[1]]) == ["nvidia"]
    await rt.close()


async def test_a_real_node_without_a_gpu_kit_refuses(tmp_path):
    sysfs = await asyncio.to_thread(tree, tmp_path)
    rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data"))
    with pytest.raises(AgentError, match="no GPU kit is built on this node"):
        await rt.start(ReplicaSpec(name="one", image="sh", gpu_bdfs=[H100[1]]))
    assert await adrivers(sysfs, [H100[1]]) == ["nvidia"]  # given back
    await rt.close()


async def test_gpus_go_back_when_the_vm_ends_by_itself(tmp_path):
    sysfs = await asyncio.to_thread(tree, tmp_path)
    rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data", simulated="8xH100"))
    await rt.start(ReplicaSpec(name="job", image="sh", args=["exit 0"], gpu_bdfs=[H100[2]]))
    await wait_state(rt, "job", {"stopped"})
    for _ in range(100):
        if await adrivers(sysfs, [H100[2]]) == ["nvidia"]:
            break
        await asyncio.sleep(0.05)
    assert await adrivers(sysfs, [H100[2]]) == ["nvidia"]
    # ... so the next replica on that GPU binds it at once, without a `vm rm` of the first.
    info = await rt.start(ReplicaSpec(name="next", image="sh", gpu_bdfs=[H100[2]]))
    assert info.state == "running"
    await rt.stop("next", timeout=2)
    await rt.close()


def test_an_agent_killed_between_bind_and_vm_start_recovers_the_binding(tmp_path):
    """The runtime binds all 12 functions of the board, then dies (SIGKILL) as it launches
    QEMU: the next runtime's recover() drops the half-made VM and gives every device back."""
    sysfs = tree(tmp_path)
    before = snapshot(sysfs.root)
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from pathlib import Path
        from nodes.agent.gpu.host import GpuHost
        from nodes.agent.simulate import SimulatedSysfs
        from protocol.wire import ReplicaSpec
        from tests.agent.test_runtime_gpus import runtime, RecordingVmm

        class Dies(RecordingVmm):
            async def launch(self, launch):
                os.kill(os.getpid(), signal.SIGKILL)

        tmp = Path({str(tmp_path)!r})
        rt = runtime(tmp, GpuHost(SimulatedSysfs({str(sysfs.root)!r}), tmp / "data", simulated="8xH100"), Dies())
        asyncio.run(rt.start(ReplicaSpec(name="big", image="sh", gpu_bdfs={H100!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    record = json.loads((tmp_path / "data" / "vfio" / "big.json").read_text())
    assert record["state"] == "bound" and set(drivers(sysfs, H100 + SWITCHES)) == {"vfio-pci"}

    async def recover():
        rt = runtime(tmp_path, GpuHost(sysfs, tmp_path / "data", simulated="8xH100"))
        adopted = await rt.recover()
        await rt.close()
        return adopted

    assert asyncio.run(recover()) == []
    assert snapshot(sysfs.root) == before
    assert not (tmp_path / "data" / "vfio" / "big.json").exists()
