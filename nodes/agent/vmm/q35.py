"""The second machine model: `-M q35` for VMs that are given GPUs by VFIO passthrough.

microvm has no PCI bus, so a VM with GPUs is a q35 machine instead: one `pcie-root-port` per
passed card (a card's functions share it, function 0 first) or NVSwitch, each `vfio-pci`; the
root ports hang off one PCIe expander bridge (`pxb-pcie`) per guest NUMA node, so the guest sees
each GPU on the NUMA node it has on the host; a 64-bit PCI hole sized from the devices' real BAR
sizes, with `host-phys-bits` so the guest can address it; guest memory pre-allocated, locked
(VFIO DMA needs every page pinned) and bound to the host NUMA node of that guest node, from
1 GiB or 2 MiB hugepages when the node has enough free; each vCPU thread pinned to its host
node's CPUs once QEMU runs. The virtio devices become virtio-*-pci on pcie.0.

`plan()` decides all of it from the attachment and the host's Sysfs; `Q35Machine` renders the
argv pieces qemu.py puts in its command line. Nothing here starts anything but `pin_vcpus`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nodes.agent.sysfs import Sysfs
from nodes.agent.vfio import Attachment, PassedDevice
from nodes.agent.vmm import qmp

__all__ = ["GuestNode", "Q35Machine", "hole64_bytes", "plan", "pin_vcpus", "GPU_KIT_SERIAL"]

GIB = 1 << 30
MIB = 1 << 20
# QEMU's own default for q35; a VM's hole is never smaller.
MIN_HOLE64 = 32 * GIB
GPU_KIT_SERIAL = "gantry-gpukit"  # how the guest's /init finds the GPU kit's disk
GUEST_FIRMWARE_PATH = "/gpukit/firmware"  # where /init mounts the kit's firmware


@dataclass(frozen=True)
class GuestNode:
    """One guest NUMA node: the host node it lives on, its vCPUs and memory."""

    node: int  # guest node id
    host_node: int | None  # None: the host does not say (no binding)
    host_cpus: tuple[int, ...]
    vcpus: tuple[int, ...]
    memory_mib: int
    hugepage_kib: int | None  # 1048576, 2048, or None for ordinary pages


@dataclass(frozen=True)
class Q35Machine:
    devices: tuple[PassedDevice, ...]
    nodes: tuple[GuestNode, ...]
    hole64: int  # bytes
    gpu_kit: Path | None = None  # the GPU kit's read-only disk image
    # VFIO pins every guest page for device DMA; off only for a machine with nothing passed.
    lock_memory: bool = True

    @property
    def gpus(self) -> list[str]:
        return [d.bdf for d in self.devices if d.kind == "gpu"]

    def machine_args(self, accel: str) -> list[str]:
        if accel == "kvm":
            # The guest's physical address width is the host's: a hole of several TiB above
            # guest RAM would not be addressable with QEMU's default of 40 bits.
            cpu = ["-accel", "kvm", "-cpu", "host,host-phys-bits=on"]
        else:
            # TCG runs no passthrough (VFIO needs KVM); it boots this machine only in tests.
            cpu = ["-accel", "tcg,tb-size=32", "-cpu", "max"]
        return ["-M", "q35,smm=off,vmport=off", *cpu,
                "-global", f"q35-pcihost.pci-hole64-size={self.hole64 // GIB}G"]

    def memory_args(self) -> list[str]:
        argv = []
        for n in self.nodes:
            props = f"id=mem{n.node},size={n.memory_mib}M,prealloc=on"
            if n.hugepage_kib:
                backend = f"memory-backend-memfd,{props},hugetlb=on,hugetlbsize={n.hugepage_kib * 1024}"
            else:
                backend = f"memory-backend-ram,{props}"
            if n.host_node is not None:
                backend += f",host-nodes={n.host_node},policy=bind"
            if n.host_cpus:
                # Touching hundreds of GiB page by page is minutes on one thread.
                backend += f",prealloc-threads={min(16, len(n.host_cpus))}"
            cpus = f"{n.vcpus[0]}-{n.vcpus[-1]}" if len(n.vcpus) > 1 else str(n.vcpus[0])
            argv += ["-object", backend, "-numa", f"node,nodeid={n.node},cpus={cpus},memdev=mem{n.node}"]
        # Locked, as VFIO pins it anyway: a swapped-out page under a device's DMA is corruption.
        return [*argv, "-overcommit", "mem-lock=on"] if self.lock_memory else argv

    def device_args(self) -> list[str]:
        argv = []
        by_node = {n.host_node: n.node for n in self.nodes}
        for n in self.nodes:
            argv += ["-device", f"pxb-pcie,id=pxb{n.node},bus_nr={0x20 * (n.node + 1)},numa_node={n.node},bus=pcie.0"]
        port = 0
        for slot, functions in _cards(self.devices):
            guest_node = by_node.get(functions[0].numa_node, self.nodes[0].node)
            port += 1
            argv += ["-device", f"pcie-root-port,id=rp{port},bus=pxb{guest_node},chassis={port},slot=0"]
            for function, dev in enumerate(functions):
                multi = ",multifunction=on" if function == 0 and len(functions) > 1 else ""
                argv += ["-device", f"vfio-pci,host={dev.bdf},bus=rp{port},addr=00.{function}{multi}"]
        if self.gpu_kit is not None:
            # On pcie.0 by name: a device without a bus goes on the last one made, a pxb-pcie,
            # which takes bridges only.
            argv += ["-drive", f"id=gpukit,file={self.gpu_kit},format=raw,if=none,readonly=on",
                     "-device", f"virtio-blk-pci,drive=gpukit,serial={GPU_KIT_SERIAL},bus=pcie.0"]
        return argv

    def kernel_cmdline(self, base: str) -> str:
        """microvm's command line without `pci=off`, and the GPU kit's firmware path."""
        words = [w for w in base.split() if w != "pci=off"]
        if self.gpu_kit is not None:
            words.append(f"firmware_class.path={GUEST_FIRMWARE_PATH}")
        return " ".join(words)

    def launch_prefix(self) -> list[str]:
        # QEMU locks all guest memory (mem-lock, and VFIO's own pinning): its limit must allow it.
        return ["prlimit", "--memlock=unlimited:unlimited", "--"] if self.lock_memory else []


def _cards(devices) -> list[tuple[str, list[PassedDevice]]]:
    """Devices grouped by PCI slot, function 0 first, in passthrough order."""
    order: list[str] = []
    cards: dict[str, list[PassedDevice]] = {}
    for dev in devices:
        slot = dev.bdf.rsplit(".", 1)[0]
        if slot not in cards:
            order.append(slot)
            cards[slot] = []
        cards[slot].append(dev)
    return [(slot, sorted(cards[slot], key=lambda d: d.bdf)) for slot in order]


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def hole64_bytes(devices) -> int:
    """Room above 4 GiB for every 64-bit BAR. A root port's window holds its card's BARs and is
    placed on the alignment of the biggest of them, so a 128 GiB BAR1 beside a 32 MiB BAR3
    takes 256 GiB of address space; the sum over the ports, rounded up to a power of two, and
    never under QEMU's own default."""
    total = 0
    for _, functions in _cards(devices):
        bars = [size for dev in functions for size in dev.bar64]
        if bars:
            align = _next_pow2(max(bars))
            total += -(-sum(bars) // align) * align
    return max(MIN_HOLE64, _next_pow2(total))


def plan(attachment: Attachment, sysfs: Sysfs, *, vcpus: int, memory_mib: int, gpu_kit: Path | None) -> Q35Machine:
    """The machine for this attachment: guest NUMA nodes for the host NUMA nodes its GPUs hang
    off (vCPUs and memory split evenly), hugepages where each host node has enough free."""
    host_nodes = sorted({d.numa_node for d in attachment.devices if d.kind == "gpu" and d.numa_node >= 0})
    numa = sysfs.numa_nodes()
    if not host_nodes:
        host_nodes = [None]
    count = len(host_nodes)
    vcpus = max(vcpus, count)
    nodes = []
    first = 0
    for i, host in enumerate(host_nodes):
        share = vcpus // count + (1 if i < vcpus % count else 0)
        mib = memory_mib // count
        page = None
        if host is not None:
            pages = sysfs.numa_hugepages(host)
            for size in (1048576, 2048):
                need = -(-mib * 1024 // size)
                if pages.get(size, (0, 0))[1] >= need:
                    page = size
                    mib = need * size // 1024
                    break
        nodes.append(GuestNode(node=i, host_node=host, host_cpus=tuple(numa.get(host, ())) if host is not None else (),
                               vcpus=tuple(range(first, first + share)), memory_mib=mib, hugepage_kib=page))
        first += share
    return Q35Machine(devices=attachment.devices, nodes=tuple(nodes), hole64=hole64_bytes(attachment.devices),
                      gpu_kit=gpu_kit)


async def pin_vcpus(qmp_socket: Path, machine: Q35Machine) -> dict[int, list[int]]:
    """Pins each vCPU thread to the CPUs of its guest node's host node (QMP says which thread
    runs which vCPU, and which node it belongs to). Returns thread id -> CPUs."""
    wanted = {n.node: list(n.host_cpus) for n in machine.nodes if n.host_cpus}
    if not wanted:
        return {}
    pinned: dict[int, list[int]] = {}
    for cpu in await qmp.command(qmp_socket, "query-cpus-fast", timeout=5):
        node = cpu.get("props", {}).get("node-id", 0)
        thread = cpu.get("thread-id")
        if thread and node in wanted:
            os.sched_setaffinity(thread, wanted[node])
            pinned[thread] = wanted[node]
    return pinned
