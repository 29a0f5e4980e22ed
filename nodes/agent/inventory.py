"""What this node is, as the plane needs it to place replicas: CPUs, memory, disk, accelerator.

Blocking reads of /proc and statvfs: call `collect` and `free_disk_gib` through
`asyncio.to_thread`. GPUs are an empty list until the GPU issue's NVML + sysfs inventory.
"""

from __future__ import annotations

import os
import shutil
import socket
from importlib import metadata
from pathlib import Path

from nodes.protocol import Inventory

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


def collect(data_dir: Path, accel_name: str) -> Inventory:
    """`accel_name`: what the runtime's probe found (`runtime.host()`), "kvm" or "tcg"."""
    return Inventory(
        hostname=socket.gethostname(),
        agent_version=agent_version(),
        cpus=os.cpu_count() or 1,
        memory_mib=memory_mib(),
        disk_gib=int(free_disk_gib(data_dir)),
        accelerator=accel_name,
        simulated=False,
        gpus=[],
    )
