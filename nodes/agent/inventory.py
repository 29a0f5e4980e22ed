"""What this node is, as the plane needs it to place replicas: CPUs, memory, disk, accelerator,
and, through the node's GpuHost, its GPUs, NVSwitches, IOMMU groups and preflight.

Blocking reads of /proc, sysfs, NVML and statvfs: call `collect` and `free_disk_gib` through
`asyncio.to_thread`. `cpus` and `memory_mib` are this machine's own (what its VMs can really
get), even on a node that simulates a GPU board.
"""

from __future__ import annotations

import os
import shutil
import socket
from importlib import metadata
from pathlib import Path

from nodes.agent.gpu.host import GpuHost
from protocol.wire import Inventory

MEMINFO = Path("/proc/meminfo")


def agent_version() -> str:
    try:
        return metadata.version("gantry")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # run from a checkout that was never pip-installed


def memory_mib(meminfo: Path = MEMINFO) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024  # the kernel reports kB (KiB)
    raise RuntimeError(f"{meminfo} has no MemTotal line")


def free_disk_gib(data_dir: Path) -> float:
    # The data dir may not exist yet on a node that has only just joined; its parent's
    # filesystem is the one it will live on.
    path = Path(data_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**30


def collect(data_dir: Path, accel_name: str, *, gpus: GpuHost | None = None, accel_reason: str = "") -> Inventory:
    """`accel_name`: what the runtime's probe found (`runtime.host()`), "kvm" or "tcg"."""
    gpu = gpus.inventory(accel=accel_name, accel_reason=accel_reason) if gpus is not None else {}
    return Inventory(
        hostname=socket.gethostname(),
        agent_version=agent_version(),
        cpus=os.cpu_count() or 1,
        memory_mib=memory_mib(),
        disk_gib=int(free_disk_gib(data_dir)),
        accelerator=accel_name,
        simulated=gpus is not None and gpus.simulated is not None,
        gpus=gpu.get("gpus", []),
        nvswitches=gpu.get("nvswitches", []),
        host=gpu.get("host", {}),
        vfio=gpu.get("vfio", {}),
        preflight=gpu.get("preflight", {}),
        nvidia=gpu.get("nvidia", {}),
        gpu_kit=gpu.get("gpu_kit"),
        simulated_board=gpu.get("simulated_board"),
    )
