"""`--simulate-gpus`: a GPU server's sysfs as a directory tree, and the kernel's part in it.

`build_tree(root, board)` lays out what the kernel would show on that board: PCI functions with
their ids, BARs, NUMA nodes, drivers and IOMMU groups, the NVSwitches of an HGX baseboard, two
NUMA nodes of CPUs and memory, hugepages, /dev/vfio, and the NVIDIA driver's /proc files. The
agent then runs its real inventory, preflight and VFIO code over it through `SimulatedSysfs`,
which plays the kernel where the code writes an attribute: `driver_override`, a driver's
`bind`/`unbind`, `drivers_probe` and `reset` move the `driver` links (and /dev/vfio/<group>)
as the kernel would. A bind followed by an unbind leaves the tree byte for byte as it was.

The tree is kept in the agent's data dir, so the simulated GPUs' UUIDs and bindings survive an
agent restart the way a real host's do. Files under `<root>/.sim/` are the simulation's own:
`board.json`, the NVIDIA driver's per-GPU /proc text while a GPU is not bound to it, and
`fail-reset/<bdf>` markers that make that function's reset fail (EIO), for tests and for
operators who want to watch a GPU being taken out of service.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from nodes.agent.gpu.models import GPU_MODELS
from nodes.agent.sysfs import CLASS_PCI_BRIDGE, Sysfs

__all__ = ["BOARDS", "Board", "SimulatedSysfs", "build_tree", "board_of"]

GIB = 1 << 30
MIB = 1 << 20
# IORESOURCE_MEM | PREFETCH | MEM_64 and plain 32-bit MEM, as `resource` shows them.
_BAR64 = 0x14220C
_BAR32 = 0x40200
SIM_DRIVER_VERSION = "535.261.03"
SIM_KERNEL = "6.1.0-57-amd64"


@dataclass(frozen=True)
class Board:
    name: str
    gpu_device: int
    gpu_subsystem: int
    gpu_bdfs: tuple[str, ...]
    gpu_numa: tuple[int, ...]
    bar1: int
    nvswitch_bdfs: tuple[str, ...] = ()
    nvswitch_numa: tuple[int, ...] = ()
    # The card's HDMI/DP audio function, in the GPU's IOMMU group (PCIe boards).
    audio_device: int | None = None
    cores_per_socket: int = 56
    memory_gib: int = 2048


_HGX_GPUS = ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
             "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0")
_HGX_SWITCHES = ("0000:05:00.0", "0000:06:00.0", "0000:85:00.0", "0000:86:00.0")

BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("8xH100", 0x2330, 0x16C1, _HGX_GPUS, (0, 0, 0, 0, 1, 1, 1, 1), 128 * GIB,
          _HGX_SWITCHES, (0, 0, 1, 1)),
    Board("8xH200", 0x2335, 0x18BE, _HGX_GPUS, (0, 0, 0, 0, 1, 1, 1, 1), 256 * GIB,
          _HGX_SWITCHES, (0, 0, 1, 1)),
    Board("4xL40S", 0x26B9, 0x1851, ("0000:17:00.0", "0000:65:00.0", "0000:ca:00.0", "0000:e3:00.0"),
          (0, 0, 1, 1), 64 * GIB, audio_device=0x22BA, cores_per_socket=32, memory_gib=1024),
)}

DRIVERS = ("nvidia", "nvidia-nvswitch", "snd_hda_intel", "pcieport", "vfio-pci")


def board_of(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}: choose one of {', '.join(BOARDS)}") from None


# -- the tree ---------------------------------------------------------------------------------


class _Tree:
    def __init__(self, root: Path):
        self.root = root
        self.group = 0

    def file(self, rel: str, text: str = "", mode: int = 0o644) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def link(self, rel: str, target_rel: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(self.root / target_rel, path.parent))

    def function(self, dev_rel: str, bdf: str, *, vendor: int, device: int, cls: int, numa: int,
                 driver: str | None, group: int, bars: list[tuple[int, int]] = (), subsystem: tuple[int, int] = (0, 0),
                 reset: str | None = None) -> None:
        d = f"{dev_rel}/{bdf}"
        self.file(f"{d}/vendor", f"0x{vendor:04x}\n", 0o444)
        self.file(f"{d}/device", f"0x{device:04x}\n", 0o444)
        self.file(f"{d}/class", f"0x{cls:06x}\n", 0o444)
        self.file(f"{d}/subsystem_vendor", f"0x{subsystem[0]:04x}\n", 0o444)
        self.file(f"{d}/subsystem_device", f"0x{subsystem[1]:04x}\n", 0o444)
        self.file(f"{d}/numa_node", f"{numa}\n", 0o444)
        self.file(f"{d}/driver_override", "(null)\n")
        lines, base = [], 0x200000000000 + int(bdf[5:7], 16) * 0x4000000000
        for index in range(13):
            size, flags = bars[index] if index < len(bars) else (0, 0)
            if size:
                lines.append(f"0x{base:016x} 0x{base + size - 1:016x} 0x{flags:016x}")
                base += max(size, GIB)
            else:
                lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
        self.file(f"{d}/resource", "\n".join(lines) + "\n", 0o444)
        if reset is not None:
            self.file(f"{d}/reset", "", 0o200)
            self.file(f"{d}/reset_method", f"{reset}\n")
        self.link(f"sys/bus/pci/devices/{bdf}", d)
        self.link(f"{d}/iommu_group", f"sys/kernel/iommu_groups/{group}")
        self.link(f"sys/kernel/iommu_groups/{group}/devices/{bdf}", d)
        if driver:
            self.link(f"{d}/driver", f"sys/bus/pci/drivers/{driver}")
            self.link(f"sys/bus/pci/drivers/{driver}/{bdf}", d)

    def next_group(self) -> int:
        self.group += 1
        return self.group


def _gpu_information(model: str, gpu_uuid: str, bdf: str, minor: int) -> str:
    # The NVIDIA driver's /proc/driver/nvidia/gpus/<bdf>/information, as 535 writes it.
    return (f"Model: \t\t {model}\nIRQ:   \t\t 0\nGPU UUID: \t {gpu_uuid}\nVideo BIOS: \t 96.00.00.00.00\n"
            f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bdf}\n"
            f"Device Minor: \t {minor}\nGPU Excluded:\t No\n")


def build_tree(root: Path, board_name: str) -> Path:
    """Lays out `board_name`'s tree under `root` unless it is already there (same board).
    Blocking: call through asyncio.to_thread. Returns root."""
    board = board_of(board_name)
    root = Path(root)
    marker = root / ".sim" / "board.json"
    if marker.exists():
        existing = json.loads(marker.read_text())["board"]
        if existing != board.name:
            raise ValueError(f"{root} already simulates {existing}, not {board.name}")
        return root
    tmp = root.with_name(f".{root.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    t = _Tree(tmp)
    model = GPU_MODELS[board.gpu_device]
    for driver in DRIVERS:
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            t.file(f"sys/bus/pci/drivers/{driver}/{attr}", "", 0o200)
    t.file("sys/bus/pci/drivers_probe", "", 0o200)
    t.file("sys/bus/pci/drivers_autoprobe", "1\n")
    for module in ("vfio", "vfio_pci", "vfio_iommu_type1", "nvidia"):
        (tmp / "sys" / "module" / module).mkdir(parents=True, exist_ok=True)

    t.function("sys/devices/pci0000:00", "0000:00:00.0", vendor=0x8086, device=0x09A2, cls=0x060000, numa=0,
               driver=None, group=0)
    uuids = []
    for i, (bdf, numa) in enumerate(zip(board.gpu_bdfs, board.gpu_numa)):
        port = f"0000:{int(bdf[5:7], 16) - 1:02x}:00.0"
        root_bus = f"sys/devices/pci0000:{port[5:7]}"
        t.function(root_bus, port, vendor=0x1000, device=0xC030, cls=0x060400, numa=numa, driver="pcieport",
                   group=t.next_group())
        group = t.next_group()
        bars = [(16 * MIB, _BAR32), (board.bar1, _BAR64), (0, 0), (32 * MIB, _BAR64)]
        t.function(f"{root_bus}/{port}", bdf, vendor=0x10DE, device=board.gpu_device, cls=0x030200, numa=numa,
                   driver="nvidia", group=group, bars=bars, subsystem=(0x10DE, board.gpu_subsystem), reset="flr bus")
        if board.audio_device is not None:
            t.function(f"{root_bus}/{port}", f"{bdf[:-1]}1", vendor=0x10DE, device=board.audio_device, cls=0x040300,
                       numa=numa, driver="snd_hda_intel", group=group, bars=[(16 * 1024, _BAR32)],
                       subsystem=(0x10DE, board.gpu_subsystem), reset="flr")
        gpu_uuid = f"GPU-{uuid.uuid4()}"
        uuids.append(gpu_uuid)
        info = _gpu_information(model.name, gpu_uuid, bdf, i)
        t.file(f".sim/nvidia/{bdf}/information", info)
        t.file(f"proc/driver/nvidia/gpus/{bdf}/information", info, 0o444)
        t.file(f"dev/nvidia{i}", "", 0o666)
    for i, (bdf, numa) in enumerate(zip(board.nvswitch_bdfs, board.nvswitch_numa)):
        root_bus = f"sys/devices/pci0000:{int(bdf[5:7], 16) - 1:02x}"
        t.function(root_bus, bdf, vendor=0x10DE, device=0x22A3, cls=0x068000, numa=numa, driver="nvidia-nvswitch",
                   group=t.next_group(), bars=[(32 * MIB, _BAR64)], subsystem=(0x10DE, 0x1796), reset="flr")
        t.file(f"dev/nvidia-nvswitch{i}", "", 0o666)
    if board.nvswitch_bdfs:
        t.file("dev/nvidia-nvswitchctl", "", 0o666)
    t.file("dev/nvidiactl", "", 0o666)
    t.file("dev/vfio/vfio", "", 0o666)
    t.file("dev/kvm", "", 0o666)
    t.file("dev/kmsg", "")
    t.file("proc/driver/nvidia/version",
           f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {SIM_DRIVER_VERSION}  Release Build\n", 0o444)

    # Linux numbers the first thread of every core first, socket by socket, then the siblings.
    for socket in (0, 1):
        first = socket * board.cores_per_socket
        siblings = 2 * board.cores_per_socket + first
        cpulist = f"{first}-{first + board.cores_per_socket - 1},{siblings}-{siblings + board.cores_per_socket - 1}"
        node = f"sys/devices/system/node/node{socket}"
        kib = board.memory_gib * 1024 * 1024 // 2
        t.file(f"{node}/cpulist", cpulist + "\n", 0o444)
        t.file(f"{node}/meminfo", f"Node {socket} MemTotal:       {kib} kB\nNode {socket} MemFree:        {kib // 2} kB\n", 0o444)
        pages = board.memory_gib * 3 // 8  # 1 GiB pages reserved per node: 3/4 of memory in all
        t.file(f"{node}/hugepages/hugepages-1048576kB/nr_hugepages", f"{pages}\n")
        t.file(f"{node}/hugepages/hugepages-1048576kB/free_hugepages", f"{pages}\n", 0o444)
        t.file(f"{node}/hugepages/hugepages-2048kB/nr_hugepages", "0\n")
        t.file(f"{node}/hugepages/hugepages-2048kB/free_hugepages", "0\n", 0o444)
    for cpu in range(4 * board.cores_per_socket):
        core = cpu % (2 * board.cores_per_socket)
        t.file(f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id", f"{core // board.cores_per_socket}\n", 0o444)
        t.file(f"sys/devices/system/cpu/cpu{cpu}/topology/core_id", f"{core % board.cores_per_socket}\n", 0o444)
    total_pages = board.memory_gib * 3 // 4
    t.file("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", f"{total_pages}\n")
    t.file("sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", f"{total_pages}\n", 0o444)
    t.file("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0\n")
    t.file("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "0\n", 0o444)
    t.file("proc/meminfo", f"MemTotal:       {board.memory_gib << 20} kB\nHugePages_Total:    {total_pages}\n"
                           f"Hugepagesize:       2048 kB\n", 0o444)
    t.file("proc/cmdline", f"BOOT_IMAGE=/boot/vmlinuz-{SIM_KERNEL} root=/dev/sda1 ro intel_iommu=on iommu=pt "
                           "default_hugepagesz=1G hugepagesz=1G\n", 0o444)
    t.file("proc/sys/kernel/osrelease", f"{SIM_KERNEL}\n", 0o444)
    t.file(f"lib/modules/{SIM_KERNEL}/kernel/drivers/vfio/pci/vfio-pci.ko", "")
    t.file(".sim/board.json", json.dumps({"board": board.name, "gpu_uuids": uuids}, indent=1) + "\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root


# -- the kernel's part ------------------------------------------------------------------------


class SimulatedSysfs(Sysfs):
    """Sysfs over a `build_tree` tree that answers attribute writes as the kernel does.

    Copies the kernel's observable behaviour (drivers/pci/pci-sysfs.c, bus.c, pci-driver.c):
    `driver_override` keeps one name (a newline clears it, and it then reads "(null)");
    `<driver>/unbind` of a function bound elsewhere is ENODEV; `<driver>/bind` is EBUSY when the
    function is bound and ENODEV when that driver would not take it (vfio-pci takes only what
    its override names); `drivers_probe` binds an unbound function to its override, or to its
    default driver if that driver is loaded; /dev/vfio/<group> exists while a member of the
    group is bound to vfio-pci; the NVIDIA driver's /proc entry for a GPU exists while the GPU
    is bound to it; `reset` succeeds unless `.sim/fail-reset/<bdf>` exists (then EIO)."""

    def __init__(self, root: Path | str):
        super().__init__(root)
        self.resets: list[str] = []

    def write(self, path: Path, text: str) -> None:
        rel = Path(path).relative_to(self.root).parts
        value = text.strip()
        if rel[:4] == ("sys", "bus", "pci", "devices") and len(rel) == 6:
            bdf, attr = rel[4], rel[5]
            if attr == "driver_override":
                return self._override(bdf, value)
            if attr == "reset":
                return self._reset(bdf)
        if rel[:4] == ("sys", "bus", "pci", "drivers") and len(rel) == 6 and rel[5] in ("bind", "unbind"):
            return self._bind(value, rel[4]) if rel[5] == "bind" else self._unbind(value, rel[4])
        if rel == ("sys", "bus", "pci", "drivers_probe"):
            return self._probe(value)
        super().write(path, text)

    def _dev_dir(self, bdf: str) -> Path:
        link = self.pci(bdf)
        if not link.is_symlink():
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(link))
        return Path(os.path.normpath(link.parent / os.readlink(link)))

    def _override(self, bdf: str, value: str) -> None:
        (self._dev_dir(bdf) / "driver_override").write_text(f"{value or '(null)'}\n")

    def _reset(self, bdf: str) -> None:
        self._dev_dir(bdf)
        if (self.root / ".sim" / "fail-reset" / bdf).exists():
            raise OSError(errno.EIO, os.strerror(errno.EIO), f"reset {bdf}")
        self.resets.append(bdf)

    def _default_driver(self, bdf: str) -> str | None:
        dev = self.pci_device(bdf)
        if dev.class16 == CLASS_PCI_BRIDGE:
            return "pcieport"
        driver = {"gpu": "nvidia", "nvswitch": "nvidia-nvswitch", "audio": "snd_hda_intel"}.get(dev.kind)
        # Both NVIDIA drivers are nvidia.ko: with the module unloaded neither takes a device.
        if driver in ("nvidia", "nvidia-nvswitch") and not self.sys("module", "nvidia").is_dir():
            return None
        return driver

    def _unbind(self, bdf: str, driver: str) -> None:
        dev_dir = self._dev_dir(bdf)
        if self.link_name(dev_dir / "driver") != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), f"{driver}/unbind {bdf}")
        (dev_dir / "driver").unlink()
        self.pci_driver(driver, bdf).unlink()
        if driver == "nvidia":
            shutil.rmtree(self.proc("driver", "nvidia", "gpus", bdf), ignore_errors=True)
        if driver == "vfio-pci":
            group = self.link_name(dev_dir / "iommu_group")
            still = [m for m in self.iommu_group_members(int(group)) if self.link_name(self.pci(m, "driver")) == "vfio-pci"]
            if not still:
                self.vfio_group_node(int(group)).unlink(missing_ok=True)

    def _bind(self, bdf: str, driver: str) -> None:
        dev_dir = self._dev_dir(bdf)
        if (dev_dir / "driver").is_symlink():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), f"{driver}/bind {bdf}")
        override = self.read(dev_dir / "driver_override")
        allowed = driver == override if override not in (None, "(null)") else driver == self._default_driver(bdf)
        if not allowed or not self.pci_driver(driver).is_dir():
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), f"{driver}/bind {bdf}")
        (dev_dir / "driver").symlink_to(os.path.relpath(self.pci_driver(driver), dev_dir))
        self.pci_driver(driver, bdf).symlink_to(os.path.relpath(dev_dir, self.pci_driver(driver)))
        if driver == "nvidia":
            stash = self.root / ".sim" / "nvidia" / bdf / "information"
            target = self.proc("driver", "nvidia", "gpus", bdf, "information")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stash, target)
            os.chmod(target, 0o444)
        if driver == "vfio-pci":
            node = self.vfio_group_node(int(self.link_name(dev_dir / "iommu_group")))
            node.parent.mkdir(parents=True, exist_ok=True)
            node.touch(mode=0o600)
            os.chmod(node, 0o600)

    def _probe(self, bdf: str) -> None:
        dev_dir = self._dev_dir(bdf)
        if (dev_dir / "driver").is_symlink():
            return
        override = self.read(dev_dir / "driver_override")
        driver = override if override not in (None, "(null)") else self._default_driver(bdf)
        if driver and self.pci_driver(driver).is_dir():
            self._bind(bdf, driver)
