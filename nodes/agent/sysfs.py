"""The one place that turns a host path into a file name: /sys, and the few /dev, /proc and
/lib/modules files the GPU code reads.

`Sysfs(root)` prefixes every path with `root` ("/" on a real host). Inventory, preflight and
VFIO take a Sysfs and never format a path of their own, so the tests (and `--simulate-gpus`)
run the very same code against a tree in a directory. Every write to a kernel attribute goes
through `write()`, which is what a simulated tree overrides to play the kernel's part.

Everything here is blocking file work: async callers use asyncio.to_thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from protocol.vocabulary import is_pci_address

__all__ = [
    "Bar", "PciDevice", "Sysfs", "parse_cpulist", "CLASS_HOST_BRIDGE", "CLASS_PCI_BRIDGE", "CLASS_NVSWITCH",
    "VENDOR_NVIDIA", "normalize_bdf",
]

VENDOR_NVIDIA = 0x10DE
# Class codes are (base class << 8 | subclass). Only these two bridges may stay behind when an
# IOMMU group is passed through (kata-containers' pciClassesIgnoredForPassthrough matches them
# exactly); NVSwitches report 0x0680, "other bridge", and must go with the GPUs.
CLASS_HOST_BRIDGE = 0x0600
CLASS_PCI_BRIDGE = 0x0604
CLASS_NVSWITCH = 0x0680
CLASS_AUDIO = 0x0403
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_PREFETCH = 0x00002000


def normalize_bdf(text: str) -> str:
    """`18:00.0`, `0000:18:00.0` and NVML's `00000000:18:00.0` name one function."""
    parts = text.strip().lower().split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    try:
        domain, bus, devfn = parts
        bdf = f"{int(domain, 16):04x}:{bus}:{devfn}"
    except ValueError:
        raise ValueError(f"not a PCI address: {text!r}") from None
    if not is_pci_address(bdf):
        raise ValueError(f"not a PCI address: {text!r}")
    return bdf


def parse_cpulist(text: str) -> list[int]:
    """The kernel's cpulist format ("0-55,112-167") as CPU numbers."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@dataclass(frozen=True)
class Bar:
    index: int
    size: int  # bytes
    flags: int

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    vendor: int
    device: int
    class_code: int  # 24 bits, as sysfs `class` says: 0x030200 is a 3D controller
    subsystem_vendor: int
    subsystem_device: int
    numa_node: int  # -1: the firmware did not say
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    bars: tuple[Bar, ...]
    # The kernel's `reset_method` (e.g. ("flr", "bus")); () if the device has no `reset` attribute.
    reset_methods: tuple[str, ...]

    @property
    def class16(self) -> int:
        return self.class_code >> 8

    @property
    def is_bridge(self) -> bool:
        return self.class16 in (CLASS_HOST_BRIDGE, CLASS_PCI_BRIDGE)

    @property
    def is_gpu(self) -> bool:
        return self.vendor == VENDOR_NVIDIA and self.class_code >> 16 == 0x03

    @property
    def is_nvswitch(self) -> bool:
        return self.vendor == VENDOR_NVIDIA and self.class16 == CLASS_NVSWITCH

    @property
    def kind(self) -> str:
        if self.is_gpu:
            return "gpu"
        if self.is_nvswitch:
            return "nvswitch"
        if self.is_bridge:
            return "bridge"
        if self.class16 == CLASS_AUDIO:
            return "audio"
        return "other"

    @property
    def slot(self) -> str:
        """The BDF without its function: the functions of one card share it."""
        return self.bdf.rsplit(".", 1)[0]


def _hex(text: str | None, default: int = 0) -> int:
    try:
        return int(text, 16) if text else default
    except ValueError:
        return default


class Sysfs:
    """Paths under one root, and the reads and writes of the kernel attributes we use."""

    def __init__(self, root: Path | str = "/"):
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------------
    def sys(self, *parts: str) -> Path:
        return self.root.joinpath("sys", *parts)

    def dev(self, *parts: str) -> Path:
        return self.root.joinpath("dev", *parts)

    def proc(self, *parts: str) -> Path:
        return self.root.joinpath("proc", *parts)

    def lib(self, *parts: str) -> Path:
        return self.root.joinpath("lib", *parts)

    def pci(self, bdf: str, *parts: str) -> Path:
        return self.sys("bus", "pci", "devices", bdf, *parts)

    def pci_driver(self, driver: str, *parts: str) -> Path:
        return self.sys("bus", "pci", "drivers", driver, *parts)

    # -- primitives -------------------------------------------------------------------------
    @staticmethod
    def read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def write(self, path: Path, text: str) -> None:
        """One write to a kernel attribute, as `echo -n text > path` does. Raises OSError with
        the kernel's errno (ENODEV, EBUSY, EINVAL, ...)."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    @staticmethod
    def link_name(path: Path) -> str | None:
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None

    # -- PCI --------------------------------------------------------------------------------
    def pci_bdfs(self) -> list[str]:
        try:
            return sorted(p.name for p in self.sys("bus", "pci", "devices").iterdir() if is_pci_address(p.name))
        except OSError:
            return []

    def pci_device(self, bdf: str) -> PciDevice:
        group = self.link_name(self.pci(bdf, "iommu_group"))
        override = self.read(self.pci(bdf, "driver_override"))
        numa = self.read(self.pci(bdf, "numa_node"))
        if self.pci(bdf, "reset").exists():
            methods = tuple((self.read(self.pci(bdf, "reset_method")) or "unknown").split())
        else:
            methods = ()
        return PciDevice(
            bdf=bdf,
            vendor=_hex(self.read(self.pci(bdf, "vendor"))),
            device=_hex(self.read(self.pci(bdf, "device"))),
            class_code=_hex(self.read(self.pci(bdf, "class"))),
            subsystem_vendor=_hex(self.read(self.pci(bdf, "subsystem_vendor"))),
            subsystem_device=_hex(self.read(self.pci(bdf, "subsystem_device"))),
            numa_node=int(numa) if numa and numa.lstrip("-").isdigit() else -1,
            driver=self.link_name(self.pci(bdf, "driver")),
            driver_override=None if override in (None, "", "(null)") else override,
            iommu_group=int(group) if group and group.isdigit() else None,
            bars=self._bars(bdf),
            reset_methods=methods,
        )

    def _bars(self, bdf: str) -> tuple[Bar, ...]:
        """Memory BARs 0-5 from `resource` (one "start end flags" line per resource)."""
        text = self.read(self.pci(bdf, "resource")) or ""
        bars = []
        for index, line in enumerate(text.splitlines()[:6]):
            try:
                start, end, flags = (int(v, 16) for v in line.split())
            except ValueError:
                continue
            if end > start and flags & 0x200:  # IORESOURCE_MEM
                bars.append(Bar(index, end - start + 1, flags))
        return tuple(bars)

    def iommu_groups(self) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        try:
            entries = list(self.sys("kernel", "iommu_groups").iterdir())
        except OSError:
            return groups
        for entry in entries:
            if entry.name.isdigit():
                try:
                    groups[int(entry.name)] = sorted(d.name for d in (entry / "devices").iterdir())
                except OSError:
                    groups[int(entry.name)] = []
        return dict(sorted(groups.items()))

    def iommu_group_members(self, group: int) -> list[str]:
        try:
            return sorted(d.name for d in self.sys("kernel", "iommu_groups", str(group), "devices").iterdir())
        except OSError:
            return []

    def driver_loaded(self, driver: str) -> bool:
        return self.pci_driver(driver).is_dir()

    def vfio_group_node(self, group: int) -> Path:
        return self.dev("vfio", str(group))

    # -- binding (kernel attributes) --------------------------------------------------------
    def set_driver_override(self, bdf: str, driver: str | None) -> None:
        # A lone newline clears the override (the kernel treats an empty write the same way).
        self.write(self.pci(bdf, "driver_override"), driver if driver else "\n")

    def unbind(self, bdf: str) -> None:
        driver = self.link_name(self.pci(bdf, "driver"))
        if driver is not None:
            self.write(self.pci_driver(driver, "unbind"), bdf)

    def probe(self, bdf: str) -> None:
        self.write(self.sys("bus", "pci", "drivers_probe"), bdf)

    def bind(self, bdf: str, driver: str) -> None:
        self.write(self.pci_driver(driver, "bind"), bdf)

    def reset(self, bdf: str) -> None:
        self.write(self.pci(bdf, "reset"), "1")

    # -- host topology ----------------------------------------------------------------------
    def numa_nodes(self) -> dict[int, list[int]]:
        """NUMA node -> its CPUs; {} where the kernel reports no nodes."""
        out: dict[int, list[int]] = {}
        try:
            entries = list(self.sys("devices", "system", "node").iterdir())
        except OSError:
            return out
        for entry in entries:
            if entry.name.startswith("node") and entry.name[4:].isdigit():
                out[int(entry.name[4:])] = parse_cpulist(self.read(entry / "cpulist") or "")
        return dict(sorted(out.items()))

    def numa_memory_mib(self, node: int) -> int:
        for line in (self.read(self.sys("devices", "system", "node", f"node{node}", "meminfo")) or "").splitlines():
            if "MemTotal:" in line:
                return int(line.split()[-2]) // 1024
        return 0

    def numa_hugepages(self, node: int) -> dict[int, tuple[int, int]]:
        return self._hugepages(self.sys("devices", "system", "node", f"node{node}", "hugepages"))

    def hugepages(self) -> dict[int, tuple[int, int]]:
        """Page size in KiB -> (reserved, free), host-wide."""
        return self._hugepages(self.sys("kernel", "mm", "hugepages"))

    def _hugepages(self, base: Path) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        try:
            entries = list(base.iterdir())
        except OSError:
            return out
        for entry in entries:
            match = re.match(r"hugepages-(\d+)kB$", entry.name)
            if match:
                total = int(self.read(entry / "nr_hugepages") or 0)
                free = int(self.read(entry / "free_hugepages") or 0)
                out[int(match.group(1))] = (total, free)
        return dict(sorted(out.items()))

    def cpu_topology(self) -> dict[str, int]:
        """Sockets, cores and hardware threads, from each CPU's topology directory."""
        sockets: set[str] = set()
        cores: set[tuple[str, str]] = set()
        threads = 0
        try:
            entries = [e for e in self.sys("devices", "system", "cpu").iterdir() if re.match(r"cpu\d+$", e.name)]
        except OSError:
            entries = []
        for entry in entries:
            package = self.read(entry / "topology" / "physical_package_id")
            core = self.read(entry / "topology" / "core_id")
            if package is None:
                continue
            threads += 1
            sockets.add(package)
            cores.add((package, core or entry.name))
        return {"sockets": len(sockets), "cores": len(cores), "threads": threads}

    def meminfo_kib(self, key: str) -> int | None:
        for line in (self.read(self.proc("meminfo")) or "").splitlines():
            name, _, rest = line.partition(":")
            if name == key:
                return int(rest.split()[0])
        return None

    def kernel_release(self) -> str:
        return self.read(self.proc("sys", "kernel", "osrelease")) or os.uname().release

    def kernel_cmdline(self) -> str:
        return self.read(self.proc("cmdline")) or ""

    # -- processes --------------------------------------------------------------------------
    def processes(self) -> dict[int, str]:
        """pid -> command name, for every process visible under /proc."""
        out: dict[int, str] = {}
        try:
            entries = [e for e in self.proc().iterdir() if e.name.isdigit()]
        except OSError:
            return out
        for entry in entries:
            comm = self.read(entry / "comm")
            if comm is not None:
                out[int(entry.name)] = comm
        return out

    def open_files(self, pid: int) -> list[str]:
        """What a process's descriptors point at (host paths, as the kernel names them)."""
        try:
            fds = list(self.proc(str(pid), "fd").iterdir())
        except OSError:
            return []
        out = []
        for fd in fds:
            try:
                out.append(os.readlink(fd))
            except OSError:
                continue
        return out
