"""Layers made by hand, and a host around the tree they are unpacked in, for the unpacking tests
(test_layer_unpack.py, test_layer_limits.py, test_layer_properties.py).

A temporary root stands for the host: `host/` holds canaries (an /etc-like directory with a
`shadow` directory and a `passwd` file, a file beside it), each with its own mode, owner,
xattr and an mtime no unpack would write; `work/rootfs/` is the image's tree. `snapshot`
records everything outside the tree down to the inode's ctime, which any chmod, chown,
xattr, utime or new hard link moves, so a test that compares two snapshots sees any change
made to the host, by any path.
"""

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Not a time any layer below uses, so a utime on a canary shows.
CANARY_NS = 1_234_567_890_123_456_789


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chardev
    data: bytes | str = b""  # file content, or a link's target
    mode: int = 0o644
    owner: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)
    mtime: float = 1704067200


_TYPES = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.mtime = entry.mode, entry.mtime
            info.uid, info.gid = entry.owner
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            content = None
            if entry.kind == "file":
                data = entry.data if isinstance(entry.data, bytes) else entry.data.encode()
                info.size, content = len(data), io.BytesIO(data)
            else:
                info.type = _TYPES[entry.kind]
                if entry.kind in ("symlink", "hardlink"):
                    info.linkname = entry.data
                elif entry.kind == "chardev":
                    info.devmajor, info.devminor = 1, 3
            tar.addfile(info, content)
    return buf.getvalue()


def compress(data: bytes, how: str = "gzip") -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        # From a file, not a pipe: feeding megabytes through communicate() from an async test
        # crawls under the blockbuster guard, which inspects every small write.
        with tempfile.NamedTemporaryFile() as plain:
            plain.write(data)
            plain.flush()
            return subprocess.run(["zstd", "-q", "-c", plain.name], capture_output=True, check=True).stdout
    return data


def write_layer(path: Path, entries: list[Entry], how: str = "gzip") -> Path:
    path.write_bytes(compress(tar_bytes(entries), how))
    return path


@dataclass
class Host:
    base: Path
    host: Path
    etc: Path
    rootfs: Path


def make_host(base: Path) -> Host:
    host = base / "host"
    etc = host / "etc"
    (etc / "shadow").mkdir(parents=True)
    (etc / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    (host / "canary").write_bytes(b"the node's own file\n")
    rootfs = base / "work" / "rootfs"
    rootfs.mkdir(parents=True)
    for path, mode, owner in ((etc, 0o755, (0, 0)), (etc / "shadow", 0o700, (0, 42)),
                              (etc / "passwd", 0o644, (0, 0)), (host / "canary", 0o600, (7, 7))):
        os.chown(path, *owner)
        os.chmod(path, mode)
        os.setxattr(path, "user.canary", path.name.encode())
    for path in (etc / "shadow", etc / "passwd", host / "canary", etc, host):
        os.utime(path, ns=(CANARY_NS, CANARY_NS), follow_symlinks=False)
    return Host(base, host, etc, rootfs)


def _inode(path: Path) -> tuple:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        content, xattrs = "-> " + os.readlink(path), ()
    else:
        content = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        xattrs = tuple(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path)))
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, xattrs, content)


def snapshot(base: Path, skip: Path) -> dict[str, tuple]:
    """Every path under base but `skip` and what is below it: type and mode, owner, links,
    mtime, ctime, inode, xattrs, and content (files) or target (symlinks)."""
    found = {str(base): _inode(base)}
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames + filenames:
            found[str(here / name)] = _inode(here / name)
    return found
