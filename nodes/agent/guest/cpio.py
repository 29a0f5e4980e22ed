"""A newc cpio writer for the guest initramfs.

Written here rather than calling cpio(1): the archive is a few dozen entries, Debian's cpio is
one more host package, and writing headers ourselves makes the archive byte-for-byte
reproducible (mtime 0, fixed owners), so its hash only changes when an input does.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading slash
    mode: int  # full st_mode: type bits included
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, name: bytes) -> bytes:
    fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def newc(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.path.encode()
        head = _header(ino, e, name) + name + b"\0"
        out.write(head + _pad(len(head)) + e.data + _pad(len(e.data)))
    return out.getvalue()


def gzipped_newc(entries: list[Entry]) -> bytes:
    return gzip.compress(newc(entries), compresslevel=6, mtime=0)
