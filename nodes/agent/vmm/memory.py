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


def memory_use(pid: int, kernel: Path | None = None) -> MemoryUse:
    """Blocking (reads smaps): call via asyncio.to_thread. `kernel` names the kernel file so
    its mapping can be told apart from QEMU's own files."""
    # smaps names files by their real path, whatever symlinks the command line went through.
    kernel_path = str(kernel.resolve()) if kernel is not None else None
    totals = {"Rss": 0, "Pss": 0, "Anonymous": 0}
    ram = (0, 0)  # (size, rss) of the largest anonymous mapping
    tcg = image = files = 0
    current: dict[str, object] = {}

    def close() -> None:
        nonlocal ram, tcg, image, files
        if not current:
            return
        rss, size, path = current.get("Rss", 0), current.get("Size", 0), current["path"]
        if path:
            files += rss
            if path == kernel_path:
                image += rss
        elif size > ram[0]:
            ram = (size, rss)
        if "x" in current["perms"] and "w" in current["perms"]:
            tcg += rss

    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:
            close()
            path = head[5] if len(head) >= 6 else ""
            current = {"perms": head[1], "path": "" if path.startswith("[") else path}
        elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            key = head[0][:-1]
            current[key] = int(head[1])
            if key in totals:
                totals[key] += int(head[1])
    close()
    return MemoryUse(rss=totals["Rss"], pss=totals["Pss"], anonymous=totals["Anonymous"], guest_ram=ram[1],
                     tcg_cache=tcg, kernel_image=image, files=files)
