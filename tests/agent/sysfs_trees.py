"""Fake sysfs trees for the GPU tests: the boards `--simulate-gpus` builds (the agent's own
`nodes.agent.simulate.build_tree`), and the faults a real host can have, applied on top:
a group shared with a host device, the IOMMU off, a GPU held open by a process.

`snapshot(root)` reads a tree into {path: bytes or "-> link target"} so a test can say a bind
and an unbind left it byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nodes.agent.simulate import SimulatedSysfs, build_tree


def tree(tmp_path: Path, board: str = "8xH100") -> SimulatedSysfs:
    return SimulatedSysfs(build_tree(tmp_path / f"sys-{board}", board))


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
            else:
                out[rel] = "dir"
    return out


def share_group_with_nic(sysfs: SimulatedSysfs, gpu_bdf: str, nic_bdf: str = "0000:19:00.0") -> None:
    """A Mellanox NIC behind the same switch port without ACS: in the GPU's IOMMU group."""
    root = sysfs.root
    group = sysfs.pci_device(gpu_bdf).iommu_group
    gpu_dir = Path(os.path.normpath(sysfs.pci(gpu_bdf).parent / os.readlink(sysfs.pci(gpu_bdf))))
    nic_dir = gpu_dir.parent / nic_bdf
    nic_dir.mkdir()
    for name, value in (("vendor", "0x15b3"), ("device", "0x1021"), ("class", "0x020000"), ("numa_node", "0"),
                        ("subsystem_vendor", "0x15b3"), ("subsystem_device", "0x0040"), ("driver_override", "(null)"),
                        ("resource", "0x0 0x0 0x0")):
        (nic_dir / name).write_text(value + "\n")
    (root / "sys/bus/pci/drivers/mlx5_core").mkdir(parents=True)
    for attr in ("bind", "unbind"):
        (root / "sys/bus/pci/drivers/mlx5_core" / attr).touch()
    for link, target in ((root / f"sys/bus/pci/devices/{nic_bdf}", nic_dir),
                         (nic_dir / "iommu_group", root / f"sys/kernel/iommu_groups/{group}"),
                         (root / f"sys/kernel/iommu_groups/{group}/devices/{nic_bdf}", nic_dir),
                         (nic_dir / "driver", root / "sys/bus/pci/drivers/mlx5_core"),
                         (root / f"sys/bus/pci/drivers/mlx5_core/{nic_bdf}", nic_dir)):
        link.symlink_to(os.path.relpath(target, link.parent))


def iommu_off(sysfs: SimulatedSysfs) -> None:
    """What a host booted without intel_iommu=on shows: no groups, no device in one."""
    root = sysfs.root
    shutil.rmtree(root / "sys/kernel/iommu_groups")
    (root / "sys/kernel/iommu_groups").mkdir()
    for link in (root / "sys/bus/pci/devices").iterdir():
        (link / "iommu_group").unlink(missing_ok=True)
    cmdline = root / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().replace(" intel_iommu=on iommu=pt", ""))


def hold_open(sysfs: SimulatedSysfs, target: str, *, pid: int = 4242, comm: str = "python3") -> None:
    """A process with `target` (e.g. /dev/nvidia2) open, as /proc/<pid>/fd shows it."""
    fd_dir = sysfs.root / "proc" / str(pid) / "fd"
    fd_dir.mkdir(parents=True, exist_ok=True)
    (sysfs.root / "proc" / str(pid) / "comm").write_text(comm + "\n")
    (fd_dir / str(3 + len(list(fd_dir.iterdir())))).symlink_to(target)
