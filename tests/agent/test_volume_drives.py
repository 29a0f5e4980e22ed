"""How a VM gets its volumes on QEMU's command line, on both machine models: one virtio-blk
device per volume with the serial /init looks for, the backend's cache mode, discard passed
through, read-only volumes read-only to the device; and a q35 VM (the machine of GPU VMs)
really mounting one under TCG."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from nodes.agent.vmm.cmdline import GuestVolume, VmLaunch, command_line, guest_fragment
from nodes.agent.vmm.q35 import GuestNode, Q35Machine
from nodes.agent.vmm.qemu import QemuVm
from nodes.agent.vmm.spec import GuestSpec
from nodes.agent.volumes import FileVolumes
from protocol.wire import VolumeMount
from tests.agent.conftest_vmm import wait_for_event, wait_gone
from tests.agent.test_q35 import KVM, Kit, values

GIB = 1 << 30
VOLUMES = (
    GuestVolume("gantry-vol0", "file=/v/data-1,format=raw", "/data"),
    GuestVolume("gantry-vol1", "file=/v/models,,x,format=raw", "/models", readonly=True, cache="writeback"),
)


def launch(tmp_path, machine=None) -> VmLaunch:
    return VmLaunch(name="vm", vm_dir=tmp_path, kit=Kit(), accel=KVM, disk=Path("/d/overlay.qcow2"), vcpus=1,
                    memory_mib=256, guest=GuestSpec(argv=["true"]), machine=machine, volumes=VOLUMES)


def test_each_volume_is_a_virtio_disk_with_its_serial_cache_and_mode(tmp_path):
    argv = command_line(launch(tmp_path), "qcow2", None)
    drives, devices = values(argv, "-drive"), values(argv, "-device")
    assert drives[0].startswith("id=root,")  # the root disk stays the first: /init mounts /dev/vda
    assert drives[1:] == [
        "id=vol0,file=/v/data-1,format=raw,if=none,cache=none,discard=unmap,werror=report,rerror=report",
        "id=vol1,file=/v/models,,x,format=raw,if=none,cache=writeback,discard=unmap,werror=report,rerror=report,"
        "readonly=on",
    ]
    assert "virtio-blk-device,drive=vol0,serial=gantry-vol0" in devices
    assert "virtio-blk-device,drive=vol1,serial=gantry-vol1" in devices
    fragment = guest_fragment(launch(tmp_path))
    assert "GANTRY_VOLUMES='gantry-vol0:rw:/data\ngantry-vol1:ro:/models\n'" in fragment


def test_on_q35_the_volumes_are_on_pcie_0(tmp_path):
    machine = Q35Machine(devices=(), nodes=(GuestNode(0, None, (), (0,), 256, None),), hole64=32 * GIB,
                         lock_memory=False)
    devices = values(command_line(launch(tmp_path, machine), "qcow2", None), "-device")
    assert "virtio-blk-pci,drive=vol0,serial=gantry-vol0,bus=pcie.0" in devices
    assert "virtio-blk-pci,drive=vol1,serial=gantry-vol1,bus=pcie.0" in devices


@pytest.mark.vm
async def test_a_q35_vm_mounts_its_volume_and_the_data_stays(vm_launch, tmp_path):
    attach = await FileVolumes(tmp_path / "volumes").ensure(VolumeMount("q35-vol", 1, "/srv/app/data"))
    volume = GuestVolume("gantry-vol0", attach.source, "/srv/app/data", cache=attach.cache)
    machine = Q35Machine(devices=(), nodes=(GuestNode(0, None, (), (0,), 256, None),), hole64=32 * GIB,
                         lock_memory=False)
    for run, expected in (("q35a", "1"), ("q35b", "2")):
        script = "n=$(cat /srv/app/data/n 2>/dev/null || echo 0); echo $((n+1)) > /srv/app/data/n; cat /srv/app/data/n"
        l = dataclasses.replace(vm_launch(run, ["sh", "-c", script], memory_mib=256), machine=machine,
                                volumes=(volume,))
        await QemuVm().launch(l)
        events = await wait_for_event(l.vm_dir, "final", timeout=180)
        assert events[-1]["code"] == 0, (l.vm_dir / "qemu.log").read_text()[-3000:]
        assert (await asyncio.to_thread((l.vm_dir / "stdout.raw").read_text)).split() == [expected]
        await wait_gone(l.vm_dir)  # QEMU holds the volume's write lock until it exits
