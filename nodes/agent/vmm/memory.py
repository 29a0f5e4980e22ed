"""Where a QEMU process's memory goes, from /proc/<pid>/smaps.

RSS counts every resident page a process maps, so the pages all VMs on a host share (QEMU's
binary and libraries, and under PVH boot the guest kernel's image, all page cache) are counted
in full in each of them. What one more VM really adds is its anonymous memory beyond guest
RAM: TCG's translation cache, QEMU's heap and device state. Both are reported; PSS splits the
shared pages among the processes that map them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryUse", "memory_use"]


@dataclass(frozen=True)
class MemoryUse:
    """One QEMU's resident memory in KiB."""

    rss: int  # every resident page, shared ones counted in full
    pss: int  # shared pages split among the processes that map them
    anonymous: int  # private anonymous pages, guest RAM included
    guest_ram: int  # the RAM block: QEMU's largest anonymous mapping (one mmap of the guest's size)
    tcg_cache: int  # the writable+executable mapping: TCG's translation cache (none under KVM)
    kernel_image: int  # the guest kernel's file mapping (PVH boot), one copy per host
    files: int  # file-backed pages: QEMU's binary and libraries, the kernel image, the initrd

    @property
    def own(self) -> int:
        """This VM's own memory beyond guest RAM: what starting it added, and stopping it frees."""
        return self.anonymous - self.guest_ram

    @property
    def rss_beyond_guest(self) -> int:
        return self.rss - self.guest_ram

    @property
    def pss_beyond_guest(self) -> int:
        return self.pss - self.guest_ram


def _mappings(smaps: str) -> list[dict]:
    """One dict per mapping: its perms, its file path ("" when anonymous) and its KiB fields."""
    maps: list[dict] = []
    for line in smaps.splitlines():
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:
            path = head[5] if len(head) >= 6 else ""
            maps.append({"perms": head[1], "path": "" if path.startswith("[") else path})
        elif maps and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            maps[-1][head[0][:-1]] = int(head[1])
    return maps


def memory_use(pid: int, kernel: Path | None = None) -> MemoryUse:
    """Blocking (reads smaps): call via asyncio.to_thread. `kernel` names the kernel file so
    its mapping can be told apart from QEMU's own files."""
    # smaps names files by their real path, whatever symlinks the command line went through.
    kernel_path = str(kernel.resolve()) if kernel is not None else None
    maps = _mappings(Path(f"/proc/{pid}/smaps").read_text())

    def total(key: str, where=lambda m: True) -> int:
        return sum(m.get(key, 0) for m in maps if where(m))

    ram = max((m for m in maps if not m["path"]), key=lambda m: m.get("Size", 0), default={})
    return MemoryUse(
        rss=total("Rss"), pss=total("Pss"), anonymous=total("Anonymous"), guest_ram=ram.get("Rss", 0),
        tcg_cache=total("Rss", lambda m: "w" in m["perms"] and "x" in m["perms"]),
        kernel_image=total("Rss", lambda m: m["path"] == kernel_path),
        files=total("Rss", lambda m: bool(m["path"])),
    )
