"""An image's tree on the host, reached only through directory file descriptors.

Every change a layer makes goes through a descriptor of the directory it happens in, opened
one component at a time with O_NOFOLLOW, and names only the final component, which the
kernel never follows either (`dir_fd=`, `follow_symlinks=False`, O_NOFOLLOW, or a
descriptor of the entry itself). So no path string handed to the kernel crosses a symlink,
and what a symlink in the tree points at (a host path, as far as the host is concerned) is
never where a change lands.

Symlinks in the image's own paths are followed as a chroot would follow them, by reading
them: an absolute target starts again at the image's root, `..` goes up one directory of the
image, and climbing above the root is refused.

Directory metadata is applied last (a directory's mtime changes as its children arrive, and a
read-only one must stay writable until they have). By then a later entry of the same layer
may have put a symlink where a directory or one of its parents was (`a/`, `a/shadow/`, then
`a -> /etc`): the deferred pass opens each directory again from the root, component by
component without following, and checks that it is still the inode the entry made. An entry
that no longer exists gets nothing; nothing else gets its metadata.
"""

import errno
import os
import shutil
import stat
import tarfile
from collections import deque
from pathlib import Path

from nodes.agent.oci.limits import LayerMalformed, LayerRefused, show_size

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINK_HOPS = 40  # Linux's own limit
# Forty symlinks of 4,095 bytes each could make one lookup walk 80,000 components; no real
# image needs more than a few dozen, and every entry of a layer may ask for one.
_MAX_STEPS = 4096
_IS_ROOT = os.geteuid() == 0


def _join(key: str, name: str) -> str:
    return f"{key}/{name}" if key else name


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _set_xattrs(fd: int, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(fd, key[13:], value.encode("utf-8", "surrogateescape"))
            except OSError:
                pass  # e.g. security.* xattrs the host's LSM refuses; the workload rarely needs them


def _set_metadata(fd: int, member: tarfile.TarInfo) -> None:
    """Owner, xattrs, mode and times of the inode `fd` is open on: the entry itself."""
    if _IS_ROOT:
        os.chown(fd, member.uid, member.gid)
    _set_xattrs(fd, member)
    os.chmod(fd, member.mode & 0o7777)  # after chown, which clears setuid bits
    os.utime(fd, (member.mtime, member.mtime))


class Tree:
    """The rootfs of one image while one layer is applied to it. Keys are paths relative to
    the root with no symlink in them, as the tree stood when the entry was made."""

    def __init__(self, rootfs: Path, max_tracked: int):
        self.fd = os.open(rootfs, _O_DIR)
        self.created: set[str] = set()  # what this layer made: an opaque whiteout keeps these
        # Directory entries: (uid, gid, mode, mtime), and the inode the entry made. Not the
        # TarInfo, which holds the entry's whole pax header.
        self._dirs: dict[str, tuple[tuple[int, int, int, float], tuple[int, int]]] = {}
        self._tracked, self._max_tracked = 0, max_tracked
        # The last parent directory, as entries come grouped by directory. Only a removal can
        # change where a name resolves to (a new name cannot shadow an existing component), so
        # removals mark it stale; it stays open until replaced, as a caller may hold it.
        self._parent: tuple[tuple[str, ...] | None, int, str] | None = None

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc) -> None:
        if self._parent:
            os.close(self._parent[1])
        os.close(self.fd)

    # -- finding directories ----------------------------------------------------------------

    def _open_exact(self, names: list[str]) -> int | None:
        """A new descriptor of the directory at `names`, none of which may be a symlink now;
        None when one is missing, a symlink, or not a directory."""
        fd = os.dup(self.fd)
        for name in names:
            try:
                child = os.open(name, _O_DIR, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return None
                raise
            os.close(fd)
            fd = child
        return fd

    def resolve_dir(self, parts: list[str], name: str, *, create: bool) -> tuple[int, str] | None:
        """A new descriptor of the directory `parts` names in the image, and its key.
        create: make missing directories (0755, as tar does); else None when one is missing
        or is not a directory."""
        names: list[str] = []
        fd = os.dup(self.fd)
        todo = deque(parts)
        hops = steps = 0
        link: tuple[str, str] | None = None  # the last symlink followed, for the refusal
        try:
            while todo:
                part = todo.popleft()
                steps += 1
                if steps > _MAX_STEPS:
                    raise LayerRefused(f"resolving entry {name!r} walks more than {_MAX_STEPS} path components")
                if part in ("", "."):
                    continue
                if part == "..":
                    if not names:
                        # Only a symlink target can bring `..` here (names with it are refused).
                        # The guest would stop at /; the host refuses instead of guessing.
                        where, target = link or ("?", "?")
                        raise LayerRefused(f"entry {name!r} goes through symlink {where!r} -> {target!r}, "
                                           "which leads outside the image root")
                    names.pop()
                    os.close(fd)
                    fd = -1
                    reopened = self._open_exact(names)
                    if reopened is None:  # it was there a moment ago, and nothing else changes the tree
                        raise LayerMalformed(f"entry {name!r}: /{'/'.join(names)} vanished")
                    fd = reopened
                    continue
                try:
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    key = _join("/".join(names), part)
                    self.track(key)
                    self._dirs.pop(key, None)  # a directory entry removed before: not this one
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = lstat_at(fd, part)
                    if st is None or not stat.S_ISLNK(st.st_mode):
                        if not create:
                            return None
                        raise LayerMalformed(f"entry {name!r} is below /{'/'.join([*names, part])}, "
                                             "which is not a directory") from None
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise LayerRefused(f"too many levels of symlinks under /{'/'.join(parts)}") from None
                    target = os.readlink(part, dir_fd=fd)
                    link = ("/" + "/".join([*names, part]), target)
                    if target.startswith("/"):
                        names = []
                        os.close(fd)
                        fd = -1
                        fd = os.dup(self.fd)
                    todo.extendleft(reversed(target.split("/")))
                    continue
                os.close(fd)
                fd = child
                names.append(part)
            found, fd = fd, -1
            return found, "/".join(names)
        finally:
            if fd != -1:
                os.close(fd)

    def parent(self, parts: list[str], name: str) -> tuple[int, str]:
        """The directory an entry goes in, made if missing. The descriptor belongs to the tree."""
        key = tuple(parts)
        if self._parent and self._parent[0] == key:
            return self._parent[1], self._parent[2]
        fd, path = self.resolve_dir(parts, name, create=True)
        if self._parent:
            os.close(self._parent[1])
        self._parent = (key, fd, path)
        return fd, path

    # -- changing entries -------------------------------------------------------------------

    def remove(self, dir_fd: int, name: str) -> None:
        st = lstat_at(dir_fd, name)
        if st is None:
            return
        if self._parent:
            self._parent = (None, *self._parent[1:])
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # descriptor-based: never follows a symlink inside
        else:
            os.unlink(name, dir_fd=dir_fd)

    def whiteout(self, parts: list[str], target: str, name: str) -> None:
        found = self.resolve_dir(parts, name, create=False)
        if found:
            try:
                self.remove(found[0], target)
            finally:
                os.close(found[0])

    def opaque(self, parts: list[str], name: str) -> None:
        """Empty a directory of what lower layers put in it; this layer's entries stay."""
        found = self.resolve_dir(parts, name, create=False)
        if not found:
            return
        fd, key = found
        try:
            for child in os.listdir(fd):
                if _join(key, child) not in self.created:
                    self.remove(fd, child)
        finally:
            os.close(fd)

    def track(self, key: str) -> None:
        """Remember an entry this layer made. The paths are counted: a million entries with
        names of 4,096 bytes would hold gigabytes of them."""
        self._tracked += len(key)
        if self._tracked > self._max_tracked:
            raise LayerRefused(f"its entries' paths add up to more than {show_size(self._max_tracked)}, this "
                               "node's limit for one layer")
        self.created.add(key)

    def make_dir(self, dir_fd: int, name: str, key: str, member: tarfile.TarInfo) -> None:
        """Made now with its xattrs (as Docker does: a default ACL must be there before the
        children); owner, mode and times come in finish()."""
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            pass  # a directory already there (the caller removed anything else): keep its contents
        fd = os.open(name, _O_DIR, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            _set_xattrs(fd, member)
        finally:
            os.close(fd)
        self._dirs[key] = ((member.uid, member.gid, member.mode, member.mtime), (st.st_dev, st.st_ino))

    def write_file(self, dir_fd: int, name: str, source, member: tarfile.TarInfo) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            _set_metadata(fd, member)

    def symlink(self, dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        # A symlink's own xattrs are left out: Linux allows only trusted.* and security.* there,
        # and setting them would need a path (there is no descriptor of a symlink to set them on).
        os.symlink(member.linkname, name, dir_fd=dir_fd)
        if _IS_ROOT:
            os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, (member.mtime, member.mtime), dir_fd=dir_fd, follow_symlinks=False)

    def fifo(self, dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
        # A FIFO opened for reading without O_NONBLOCK would wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _set_metadata(fd, member)
        finally:
            os.close(fd)

    def hardlink(self, dir_fd: int, name: str, target: list[str], member: tarfile.TarInfo) -> None:
        missing = LayerMalformed(f"hard link {member.name!r} to missing {member.linkname!r}")
        found = self.resolve_dir(target[:-1], member.linkname, create=False) if target else None
        if not found:
            raise missing
        try:
            st = lstat_at(found[0], target[-1])
            if st is None or stat.S_ISDIR(st.st_mode):
                raise missing
            # A hard link shares the target's inode and metadata; a symlink is linked itself.
            os.link(target[-1], name, src_dir_fd=found[0], dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(found[0])

    def finish(self) -> None:
        """Directory metadata, last, deepest first (see the module docstring)."""
        for key, ((uid, gid, mode, mtime), inode) in reversed(self._dirs.items()):
            fd = self._open_exact(key.split("/"))
            if fd is None:
                continue  # a later entry replaced it, or one of its parents, with something else
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == inode:
                    if _IS_ROOT:
                        os.chown(fd, uid, gid)
                    os.chmod(fd, mode & 0o7777)
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        self._dirs.clear()
