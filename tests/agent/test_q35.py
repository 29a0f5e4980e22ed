"""The q35 machine for VMs given GPUs: QEMU's argv for 1 and 8 GPUs (root ports, BDFs, the
64-bit hole from the real BAR sizes, NUMA, NVSwitches), planned from real bindings on fake
sysfs trees; and a q35 VM (no devices to pass here) really booting its workload under TCG."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from nodes.agent.vfio import Vfio
from nodes.agent.vmm.accel import Accel
from nodes.agent.vmm.cmdline import VmLaunch, command_line
from nodes.agent.vmm.q35 import GuestNode, Q35Machine, hole64_bytes, plan
from nodes.agent.vmm.qemu import QemuVm
from nodes.agent.vmm.spec import GuestSpec
from tests.agent.conftest_vmm import *  # noqa: F401,F403
from tests.agent.conftest_vmm import wait_for_event
from tests.agent.sysfs_trees import tree
from tests.agent.test_vfio import H100, SWITCHES

GIB = 1 << 30
KVM = Accel("kvm", "test")


@dataclasses.dataclass(frozen=True)
class Kit:
    kernel: Path = Path("/kit/vmlinux")
    initrd: Path = Path("/kit/initrd.img")
    floor_initrd: Path = Path("/kit/floor.img")
    kernel_version: str = "6.1.0-57-cloud-amd64"


def launch_for(tmp_path, board, bdfs, *, vcpus=16, memory_mib=200 * 1024, kit_image=Path("/kits/gpukit.img")):
    sysfs = tree(tmp_path, board)
    attachment = Vfio(sysfs, tmp_path / "vfio").bind("vm-1", bdfs)
    machine = plan(attachment, sysfs, vcpus=vcpus, memory_mib=memory_mib, gpu_kit=kit_image)
    launch = VmLaunch(name="vm-1", vm_dir=tmp_path / "vm-1", kit=Kit(), accel=KVM, disk=Path("/d/overlay.qcow2"),
                      vcpus=sum(len(n.vcpus) for n in machine.nodes),
                      memory_mib=sum(n.memory_mib for n in machine.nodes), guest=GuestSpec(argv=["true"]),
                      machine=machine)
    return command_line(launch, "qcow2", None), machine


def values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_one_hgx_gpu_gets_one_root_port_and_a_hole_sized_from_its_bars(tmp_path):
    argv, machine = launch_for(tmp_path, "8xH100", [H100[5]], vcpus=16, memory_mib=200 * 1024)
    assert values(argv, "-M") == ["q35,smm=off,vmport=off"]
    assert "host,host-phys-bits=on" in values(argv, "-cpu")
    # BAR1 128 GiB + BAR3 32 MiB, on a window aligned to 128 GiB: 256 GiB of address space.
    assert values(argv, "-global") == ["q35-pcihost.pci-hole64-size=256G"]
    devices = values(argv, "-device")
    assert [d for d in devices if d.startswith("vfio-pci")] == [f"vfio-pci,host={H100[5]},bus=rp1,addr=00.0"]
    assert [d for d in devices if d.startswith("pcie-root-port")] == ["pcie-root-port,id=rp1,bus=pxb0,chassis=1,slot=0"]
    # H100[5] hangs off host NUMA node 1: the guest's only node lives there.
    assert [d for d in devices if d.startswith("pxb-pcie")] == ["pxb-pcie,id=pxb0,bus_nr=32,numa_node=0,bus=pcie.0"]
    (backend,) = values(argv, "-object")
    assert backend.startswith("memory-backend-memfd,id=mem0,size=204800M,prealloc=on,hugetlb=on,hugetlbsize=1073741824")
    assert "host-nodes=1,policy=bind" in backend
    assert values(argv, "-numa") == ["node,nodeid=0,cpus=0-15,memdev=mem0"]
    assert values(argv, "-overcommit") == ["mem-lock=on"]
    assert not any("0000:05:00.0" in d for d in devices)  # one GPU: no NVSwitch, its NVLinks unused
    assert machine.nodes[0].host_cpus[:2] == (56, 57)


def test_eight_hgx_gpus_take_every_nvswitch_two_numa_nodes_and_a_4_tib_hole(tmp_path):
    argv, machine = launch_for(tmp_path, "8xH100", H100, vcpus=128, memory_mib=1600 * 1024)
    devices = values(argv, "-device")
    hosts = [re.search(r"host=([^,]+)", d).group(1) for d in devices if d.startswith("vfio-pci")]
    assert hosts == H100 + SWITCHES
    ports = [d for d in devices if d.startswith("pcie-root-port")]
    assert len(ports) == 12 and len({re.search(r"chassis=(\d+)", p).group(1) for p in ports}) == 12
    buses = [re.search(r"bus=(pxb\d)", p).group(1) for p in ports]
    assert buses == ["pxb0"] * 4 + ["pxb1"] * 4 + ["pxb0", "pxb0", "pxb1", "pxb1"]  # each on its NUMA node
    # 8 x 256 GiB for the GPUs plus 4 x 32 MiB for the NVSwitches, to the next power of two.
    assert values(argv, "-global") == ["q35-pcihost.pci-hole64-size=4096G"]
    assert values(argv, "-numa") == ["node,nodeid=0,cpus=0-63,memdev=mem0", "node,nodeid=1,cpus=64-127,memdev=mem1"]
    backends = values(argv, "-object")
    assert "size=819200M" in backends[0] and "host-nodes=0" in backends[0] and "host-nodes=1" in backends[1]
    assert values(argv, "-smp") == ["128"] and values(argv, "-m") == [str(1600 * 1024)]


def test_eight_h200s_need_an_8_tib_hole(tmp_path):
    argv, _ = launch_for(tmp_path, "8xH200", H100)
    assert values(argv, "-global") == ["q35-pcihost.pci-hole64-size=8192G"]


def test_a_pcie_card_keeps_its_functions_on_one_port(tmp_path):
    argv, _ = launch_for(tmp_path, "4xL40S", ["0000:17:00.0", "0000:65:00.0"])
    devices = [d for d in values(argv, "-device") if d.startswith("vfio-pci")]
    assert devices == [
        "vfio-pci,host=0000:17:00.0,bus=rp1,addr=00.0,multifunction=on", "vfio-pci,host=0000:17:00.1,bus=rp1,addr=00.1",
        "vfio-pci,host=0000:65:00.0,bus=rp2,addr=00.0,multifunction=on", "vfio-pci,host=0000:65:00.1,bus=rp2,addr=00.1",
    ]
    assert values(argv, "-global") == ["q35-pcihost.pci-hole64-size=256G"]  # 2 x (64 GiB + 32 MiB -> 128 GiB)


def test_virtio_moves_to_pci_and_the_kernel_keeps_pci(tmp_path):
    argv, _ = launch_for(tmp_path, "8xH100", [H100[0]])
    devices = values(argv, "-device")
    assert "virtio-serial-pci,max_ports=4" in devices and "virtio-blk-pci,drive=root" in devices
    assert not any(d.endswith("-device") or d.startswith("virtio-blk-device") for d in devices)
    (cmdline,) = values(argv, "-append")
    assert "pci=off" not in cmdline.split() and "firmware_class.path=/gpukit/firmware" in cmdline
    assert "file=/kits/gpukit.img,format=raw,if=none,readonly=on" in " ".join(values(argv, "-drive"))
    assert "virtio-blk-pci,drive=gpukit,serial=gantry-gpukit,bus=pcie.0" in devices


def test_without_free_hugepages_memory_is_ordinary_but_locked(tmp_path):
    sysfs = tree(tmp_path)
    for node in (0, 1):
        (sysfs.root / f"sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/free_hugepages").write_text("2\n")
    attachment = Vfio(sysfs, tmp_path / "vfio").bind("vm", [H100[0]])
    machine = plan(attachment, sysfs, vcpus=16, memory_mib=200 * 1024, gpu_kit=None)
    assert machine.nodes[0].hugepage_kib is None
    assert machine.memory_args()[1].startswith("memory-backend-ram,id=mem0,size=204800M,prealloc=on")
    assert machine.memory_args()[-2:] == ["-overcommit", "mem-lock=on"]


def test_the_hole_is_never_below_qemus_default():
    assert hole64_bytes(()) == 32 * GIB


def test_the_microvm_command_line_is_unchanged_without_a_machine(tmp_path):
    launch = VmLaunch(name="vm", vm_dir=tmp_path, kit=Kit(), accel=KVM, disk=None, vcpus=1, memory_mib=256,
                      guest=GuestSpec(argv=["true"]))
    argv = command_line(launch, None, None)
    assert values(argv, "-M")[0].startswith("microvm") and "virtio-serial-device,max_ports=4" in values(argv, "-device")
    assert "pci=off" in values(argv, "-append")[0].split()


@pytest.mark.vm
async def test_a_q35_vm_boots_its_workload_over_virtio_pci(vm_launch, tmp_path):
    """The q35 path minus the devices (none can be passed here): PCI transport, fw_cfg spec,
    ports and root disk all work, so a VM given GPUs boots the same workload."""
    machine = Q35Machine(devices=(), nodes=(GuestNode(0, None, (), (0,), 256, None),), hole64=32 * GIB,
                         lock_memory=False)
    launch = dataclasses.replace(vm_launch("q35", ["sh", "-c", "echo hello from q35; ls /sys/bus/pci/devices | wc -l"],
                                           memory_mib=256), machine=machine)
    await QemuVm().launch(launch)
    events = await wait_for_event(launch.vm_dir, "final", timeout=180)
    assert events[-1]["code"] == 0, (launch.vm_dir / "qemu.log").read_text()[-3000:]
    out = (launch.vm_dir / "stdout.raw").read_text().split("\n")
    assert out[0] == "hello from q35" and int(out[1]) >= 3  # host bridge, LPC, virtio functions...
