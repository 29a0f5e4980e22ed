"""Apply OCI layer tarballs to a rootfs directory (blocking: call through asyncio.to_thread).

Unpacking runs on the host, as root, from bytes a customer chose, so no entry may reach
outside the image's own tree. We extract entry by entry instead of tarfile.extractall, and the
layer's paths belong to the image's root, not the host's:

- a name with `..`, or an absolute name, is refused (tar writers never produce either);
- a symlink met on the way is resolved inside the rootfs as a chroot would (an absolute `/etc`
  target means `<rootfs>/etc`, as it will in the guest); one whose target climbs above the
  image root is refused rather than clamped;
- a hard link's target is a name inside the tree like any other, and must exist;
- a whiteout (`.wh.<name>`) must name a file in its own directory: `.wh.`, `.wh..` and
  `.wh...` (the directory itself, its parent) are refused; `.wh..wh..opq` empties a lower
  directory, and other `.wh..wh.` names are aufs bookkeeping that Docker skips too;
- the final component is never followed (O_NOFOLLOW, lchown, utime without following).

Any such entry fails the pull with the reason, and nothing outside the work dir changes.
What is legal inside an image stays as it is on the guest's disk: symlinks with absolute
targets, setuid/setgid bits, any uid/gid, xattrs, FIFOs. Device nodes are dropped (with a
log line): the guest's /dev is its own devtmpfs, and a node made on the host would be a real
device of the host for as long as the unpacked tree exists. The tree lives under the
store's root-only (0700) dirs, and nothing from it is ever executed on the host.
"""

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from nodes.agent.errors import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."
_MAX_SYMLINK_HOPS = 40  # Linux's own limit
_IS_ROOT = os.geteuid() == 0
log = logging.getLogger(__name__)


def _bad_layer(layer: str, why: str) -> ImageError:
    return ImageError(f"layer {layer} is malformed: {why}", permanent=True)


def _refused(layer: str, why: str) -> ImageError:
    return ImageError(f"layer {layer} is refused: {why}", permanent=True)


def _parts(name: str, layer: str, what: str = "entry") -> list[str]:
    if name.startswith("/"):
        raise _refused(layer, f"{what} {name!r} is an absolute path (layer paths are relative to the image root)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refused(layer, f"{what} {name!r} points outside the image root")
    return parts


def _resolve(rootfs: Path, parts: list[str], layer: str, name: str) -> Path:
    """The real directory `parts` names inside rootfs, following symlinks chroot-style. The
    result contains no symlink, so the kernel follows nothing when we open below it."""
    resolved: list[str] = []
    todo = list(parts)
    hops = 0
    link: tuple[str, str] | None = None  # the last symlink followed, for the refusal
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                # Only a symlink target can bring `..` here (_parts refuses it in names). The
                # guest would stop at /; the host refuses instead of guessing what was meant.
                where, target = link or ("?", "?")
                raise _refused(layer, f"entry {name!r} goes through symlink {where!r} -> {target!r}, "
                                      "which leads outside the image root")
            resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise _refused(layer, f"too many levels of symlinks under /{'/'.join(parts)}")
            target = os.readlink(candidate)
            link = ("/" + "/".join([*resolved, part]), target)
            if target.startswith("/"):
                resolved = []
            todo = target.split("/") + todo
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _metadata(path: Path, member: tarfile.TarInfo) -> None:
    if _IS_ROOT:
        os.lchown(path, member.uid, member.gid)
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(path, key[13:], value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError:
                pass  # e.g. security.* xattrs the host's LSM refuses; the workload rarely needs them
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)  # after lchown, which clears setuid bits
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


@contextlib.contextmanager
def _open_layer(blob: Path, layer: str):
    """The layer as a streaming tarfile: plain, gzip, or zstd (Python 3.11 has no zstd, so
    the zstd CLI decompresses into a pipe)."""
    with open(blob, "rb") as probe:
        magic = probe.read(4)
    if not magic.startswith(b"\x28\xb5\x2f\xfd"):
        with tarfile.open(blob, mode="r|gz" if magic.startswith(b"\x1f\x8b") else "r|") as tar:
            yield tar
        return
    try:
        proc = subprocess.Popen(["zstd", "-dcq", str(blob)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ImageError(f"layer {layer} is zstd-compressed and zstd is not installed on this node "
                         "(run `make sysdeps`)") from None
    done = False
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            yield tar
        proc.stdout.read()  # tar stops at its end marker; zstd may still be writing padding
        done = True
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if done and code != 0:
        raise _bad_layer(layer, f"zstd: {stderr or f'exit {code}'}")


def apply_layer(blob: Path, rootfs: Path, layer: str) -> None:
    """Apply one layer (gzip or plain tar) on top of rootfs."""
    created: set[Path] = set()
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    devices: list[str] = []
    try:
        with _open_layer(blob, layer) as tar:
            for member in tar:
                _apply_member(tar, member, rootfs, layer, created, dirs, devices)
        # Directory modes and mtimes last: adding children changes a dir's mtime, and a
        # read-only dir must stay writable until its children are in.
        for path, member in reversed(dirs):
            _metadata(path, member)
        if devices:
            shown = ", ".join(devices[:5]) + (f" and {len(devices) - 5} more" if len(devices) > 5 else "")
            log.info("layer %s: dropped %d device node(s): %s", layer, len(devices), shown)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise ImageError(f"no space left to unpack layer {layer} on the agent's disk") from None
        raise _bad_layer(layer, str(exc) or type(exc).__name__) from None


def _apply_member(tar: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path, layer: str,
                  created: set[Path], dirs: list, devices: list[str]) -> None:
    parts = _parts(member.name, layer)
    if not parts:
        return  # the root entry itself: rootfs keeps 0755 root:root
    if member.ischr() or member.isblk():
        devices.append(member.name)
        return
    base = parts[-1]
    if base.startswith(WHITEOUT) and base != OPAQUE and not base.startswith(AUFS_META):
        target = base[len(WHITEOUT):]
        if target in ("", ".", ".."):
            aim = "its parent directory" if target == ".." else "its own directory"
            raise _refused(layer, f"whiteout {member.name!r} is aimed at {aim}, not at a file in it")
    parent = _resolve(rootfs, parts[:-1], layer, member.name)
    if base == OPAQUE:
        # An opaque dir hides everything lower layers put in it, not what this layer adds.
        if parent.is_dir():
            for child in list(parent.iterdir()):
                if child not in created:
                    _remove(child)
        return
    if base.startswith(AUFS_META):
        return  # aufs' own hard-link bookkeeping (.wh..wh.plnk, ...): never image content
    if base.startswith(WHITEOUT):
        _remove(parent / base[len(WHITEOUT):])
        return
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / base
    if path.is_symlink() or path.exists():
        if not (member.isdir() and path.is_dir() and not path.is_symlink()):
            _remove(path)
    created.add(path)
    if member.isdir():
        path.mkdir(exist_ok=True)
        dirs.append((path, member))
        return
    if member.isreg():
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        link_parts = _parts(member.linkname, layer, f"hard link {member.name!r} to")
        target = _resolve(rootfs, link_parts[:-1], layer, member.linkname) / link_parts[-1] if link_parts else rootfs
        if not (target.is_symlink() or target.exists()) or target.is_dir():
            raise _bad_layer(layer, f"hard link {member.name!r} to missing {member.linkname!r}")
        os.link(target, path, follow_symlinks=False)
        return  # a hard link shares the target's inode and metadata
    elif member.isfifo():
        os.mkfifo(path, member.mode & 0o7777)
    else:
        return  # sockets and unknown types have no meaning in an image
    _metadata(path, member)


def measure(rootfs: Path) -> tuple[int, int]:
    """(bytes the tree needs in 4 KiB blocks, number of inodes) for sizing its ext4 disk."""
    total, inodes = 0, 1
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            inodes += 1
            total += (st.st_size + 4095) // 4096 * 4096 if not stat.S_ISLNK(st.st_mode) else 0
    return total, inodes
