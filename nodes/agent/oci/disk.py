"""ext4 base disks from a rootfs (mkfs.ext4 -d) and per-VM qcow2 overlays (qemu-img)."""

import asyncio
from pathlib import Path

from nodes.agent.errors import ImageError

MiB = 1 << 20
# Room for the workload to write into its root: the qcow2 overlay has the base disk's size,
# and a sparse base costs only the blocks mkfs really writes.
HEADROOM_BYTES = 256 * MiB


async def run_tool(*argv: str) -> str:
    """Run a host tool; a failure becomes a transient ImageError naming it and its stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise ImageError(f"{argv[0]} is not installed on this node (run `make sysdeps`)") from None
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        raise ImageError(f"{argv[0]} failed: {lines[-1]}")
    return stdout.decode(errors="replace")


def disk_geometry(content_bytes: int, inodes: int) -> tuple[int, int]:
    """(filesystem bytes, inode count) for a tree of this size: content + a quarter + headroom."""
    size = content_bytes + content_bytes // 4 + HEADROOM_BYTES
    size = (size + 4 * MiB - 1) // (4 * MiB) * (4 * MiB)
    return size, max(inodes + inodes // 2 + 4096, size // 16384)


async def make_ext4(rootfs: Path, dest: Path, *, size_bytes: int, inodes: int, label: str) -> None:
    # -T default: mke2fs would pick the "small" profile (1 KiB blocks) below 512 MiB.
    # No journal: the base is read-only and each VM's writes land in a throwaway overlay, so
    # crash consistency buys nothing and the journal would cost real blocks in every disk.
    # -m 0: reserved blocks protect a host's daemons; a workload's root needs none.
    await run_tool(
        "mkfs.ext4", "-q", "-F", "-T", "default", "-b", "4096", "-I", "256", "-m", "0",
        "-N", str(inodes), "-O", "^has_journal", "-L", label[:16], "-E", "root_owner=0:0",
        "-d", str(rootfs), str(dest), f"{size_bytes // 1024}k")


async def make_overlay(base: Path, dest: Path) -> None:
    await run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(dest))
