"""The file backend: each volume is one sparse file in the agent's volume directory
(`<data-dir>/volumes`, 0700), named by its id and formatted ext4 by the agent when it is made.

The host only ever runs mkfs on a volume (on the file, before any guest saw it) and never
mounts one: a filesystem a guest has written is hostile input, and the host kernel's ext4
parser is not where it may land. The guest mounts it (nodes/agent/guest/init).

Crash safety by construction: a volume is made under a hidden temporary name, formatted,
fsynced and only then renamed to its id (and the directory fsynced), so a crash mid-format
leaves a temporary file that `sweep` (or the next `ensure` of that id) removes, never a
half-made volume under the real name. Every volume operation holds the volume's lock (an
flock, see locks.VmLocks), so a CLI and the daemon never make or erase one twice at once.

Delete discards the file's blocks (FALLOC_FL_PUNCH_HOLE) before it unlinks it: the space is
free at once even if some process still holds the file, and nothing it held stays on disk
under an inode. A file some QEMU has open is refused: QEMU holds OFD locks on bytes 100-299
of every image it opens (its `file.locking`), which a POSIX lock attempt conflicts with.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.locks import VmLocks
from nodes.agent.volumes.backend import VolumeAttach, VolumeUsage
from protocol.wire import MAX_VOLUME_GIB, MAX_VOLUMES_PER_NODE, VOLUME_ID_RE, ProtocolError, VolumeMount

log = logging.getLogger(__name__)

GIB = 1 << 30
# -m 0: a data volume, not a system disk; the customer pays for every GiB of it.
# nodiscard: the file is fresh and sparse, there is nothing to discard. lazy_*_init: mkfs leaves
# inode tables and the journal unzeroed; they are holes in a new sparse file, so they read as
# zeros already and the file stays sparse (the guest mounts with noinit_itable for the same reason).
MKFS = ("mkfs.ext4", "-F", "-q", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1")
# QEMU's raw-posix image locking (block/file-posix.c: RAW_LOCK_PERM_BASE 100, RAW_LOCK_SHARED_BASE
# 200): every QEMU with the file open holds at least one read lock in this range.
QEMU_LOCK_START = 100
QEMU_LOCK_LEN = 200
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, length: int) -> bool:
    """Discards the blocks of [0, length). False where the filesystem cannot (the unlink that
    follows frees them then). Blocking."""
    if length <= 0:
        return True
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


def qemu_escaped(path: Path) -> str:
    # A comma ends a QEMU option value; doubled, it is a literal comma.
    return str(path).replace(",", ",,")


def direct_io_ok(path: Path) -> bool:
    """Whether the file's filesystem takes O_DIRECT (tmpfs does not): QEMU's cache=none needs
    it. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class FileVolumes:
    """`root`: the volume directory (made 0700 on first use)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._locks = VmLocks(self.root / ".locks")

    def path(self, volume_id: str) -> Path:
        if not isinstance(volume_id, str) or not VOLUME_ID_RE.fullmatch(volume_id):
            raise AgentError(f"invalid volume id {str(volume_id)[:80]!r}: 1-63 lowercase letters, digits and hyphens",
                             permanent=True)
        return self.root / volume_id

    def _temp(self, volume_id: str) -> Path:
        return self.root / f".{volume_id}.new"

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # root-only: the files are customers' disks

    # -- ensure ------------------------------------------------------------------------------
    async def ensure(self, volume: VolumeMount) -> VolumeAttach:
        try:
            volume.check()
        except ProtocolError as exc:
            raise AgentError(f"volume refused: {exc}", permanent=True) from None
        path = self.path(volume.volume_id)
        await asyncio.to_thread(self._prepare_root)
        async with self._locks.hold(volume.volume_id):
            size = await asyncio.to_thread(_size_of, path)
            if size is None:
                await self._create(volume.volume_id, volume.size_gib)
            elif size != volume.size_gib * GIB:
                raise AgentError(
                    f"volume {volume.volume_id} is {size / GIB:g} GiB on this node and the replica asks for "
                    f"{volume.size_gib} GiB: a volume keeps the size it was made with (resizing is not supported)",
                    permanent=True)
            cache = "none" if await asyncio.to_thread(direct_io_ok, path) else "writeback"
        return VolumeAttach(volume.volume_id, f"file={qemu_escaped(path)},format=raw", cache)

    async def _create(self, volume_id: str, size_gib: int) -> None:
        free = (await self.usage()).free_gib
        if size_gib > free:
            # Sparse files would let it be made, and the guest would hit ENOSPC later, with
            # QEMU pausing the VM; a clear refusal now is better.
            raise AgentError(f"no room for volume {volume_id} ({size_gib} GiB): {free:.1f} GiB free for volumes "
                             "on this node", permanent=True)
        temp = self._temp(volume_id)
        await asyncio.to_thread(_make_sparse, temp, size_gib * GIB)
        try:
            proc = await asyncio.create_subprocess_exec(
                *MKFS, "-L", volume_id[:16], str(temp), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-2:])
                raise AgentError(f"cannot format volume {volume_id}: mkfs.ext4 exit {proc.returncode}: {tail}")
            await asyncio.to_thread(_publish, temp, self.path(volume_id))
        except BaseException:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
            raise
        log.info("volume %s made: %d GiB, ext4, sparse", volume_id, size_gib)

    # -- delete ------------------------------------------------------------------------------
    async def delete(self, volume_id: str) -> bool:
        path = self.path(volume_id)
        async with self._locks.hold(volume_id):
            gone = await asyncio.to_thread(_erase, path)
        if gone:
            log.info("volume %s erased", volume_id)
        return gone

    # -- what the node holds ------------------------------------------------------------------
    async def usage(self) -> VolumeUsage:
        return await asyncio.to_thread(self._usage)

    def _usage(self) -> VolumeUsage:
        volumes: dict[str, int] = {}
        growth = 0  # what the sparse files may still take
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # erased meanwhile
            growth += max(0, st.st_size - st.st_blocks * 512)
            if not VOLUME_ID_RE.fullmatch(entry.name):
                continue  # a volume being made counts against the space, not as a volume yet
            size_gib, rest = divmod(st.st_size, GIB)
            if rest or not 0 < size_gib <= MAX_VOLUME_GIB or len(volumes) >= MAX_VOLUMES_PER_NODE:
                log.warning("volume dir holds %s (%d bytes), which is no volume this agent made", entry.name, st.st_size)
                continue
            volumes[entry.name] = size_gib
        st = os.statvfs(_existing(self.root))
        free = st.f_bavail * st.f_frsize
        return VolumeUsage(volumes=volumes, free_gib=max(0.0, (free - growth) / GIB))

    async def sweep(self) -> None:
        try:
            names = await asyncio.to_thread(os.listdir, self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") and name.endswith(".new") and VOLUME_ID_RE.fullmatch(name[1:-4]):
                async with self._locks.hold(name[1:-4]):  # not one being made right now
                    await asyncio.to_thread((self.root / name).unlink, missing_ok=True)
                    log.info("removed %s: a volume a crash left half-made", name)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _make_sparse(temp: Path, size: int) -> None:
    temp.unlink(missing_ok=True)  # a crash's leftover; we hold the volume's lock
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, path: Path) -> None:
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)  # the filesystem mkfs wrote is on disk before the name says it exists
    finally:
        os.close(fd)
    os.rename(temp, path)
    _fsync_dir(path.parent)


def _erase(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        try:
            # Held until the unlink: no QEMU can open the file in between (its lock would fail).
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, QEMU_LOCK_LEN, QEMU_LOCK_START)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        punch_hole(fd, os.fstat(fd).st_size)
        os.unlink(path)
        _fsync_dir(path.parent)
    finally:
        os.close(fd)
    return True
