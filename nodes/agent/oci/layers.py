"""Apply OCI layer tarballs to a rootfs directory (blocking: call through asyncio.to_thread).

Unpacking runs on the host, as root, from bytes a customer chose, so no entry may reach
outside the image's own tree, and no layer may take more of the node than its limits. We
extract entry by entry instead of tarfile.extractall, and the layer's paths belong to the
image's root, not the host's:

- a name with `..`, or an absolute name, is refused (tar writers never produce either);
- a symlink met on the way is resolved inside the rootfs as a chroot would (an absolute `/etc`
  target means `<rootfs>/etc`, as it will in the guest); one whose target climbs above the
  image root is refused rather than clamped;
- a hard link's target is a name inside the tree like any other, and must exist;
- a whiteout (`.wh.<name>`) must name a file in its own directory: `.wh.`, `.wh..` and
  `.wh...` (the directory itself, its parent) are refused; `.wh..wh..opq` empties a lower
  directory, and other `.wh..wh.` names are aufs bookkeeping that Docker skips too;
- every change is made through directory descriptors and never follows the final component,
  directory metadata included, which is applied after the layer to the directory itself or
  to nothing (oci/tree.py);
- what the layer may take is bounded (oci/limits.py): the bytes one image unpacks to (64 GiB
  unless the agent says otherwise), entries per layer, the length of names and link targets,
  the size of extended headers; sparse files are refused (oci/tarstream.py).

Any such entry fails the pull with the reason, and nothing outside the work dir changes; the
caller removes the work dir of a failed pull. What is legal inside an image stays as it is on
the guest's disk: symlinks with absolute targets, setuid/setgid bits, any uid/gid, xattrs,
FIFOs. Device nodes are dropped (with a log line): the guest's /dev is its own devtmpfs, and a
node made on the host would be a real device of the host for as long as the unpacked tree
exists. The tree lives under the store's root-only (0700) dirs, and nothing from it is ever
executed on the host.
"""

import logging
import os
import stat
import tarfile
from pathlib import Path

from nodes.agent.errors import ImageError
from nodes.agent.oci.limits import LayerMalformed, LayerRefused, NodeLacks, UnpackBudget, UnpackLimits
from nodes.agent.oci.tarstream import entries, open_layer
from nodes.agent.oci.tree import Tree, lstat_at

__all__ = ["UnpackBudget", "UnpackLimits", "apply_layer", "measure"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."
log = logging.getLogger(__name__)


def _bad_layer(layer: str, why: str) -> ImageError:
    return ImageError(f"layer {layer} is malformed: {why}", permanent=True)


def _refused(layer: str, why: str) -> ImageError:
    return ImageError(f"layer {layer} is refused: {why}", permanent=True)


def _short(name: str) -> str:
    return repr(name) if len(name) <= 64 else repr(name[:60]) + "..."


def _parts(name: str, what: str = "entry") -> list[str]:
    if name.startswith("/"):
        raise LayerRefused(f"{what} {name!r} is an absolute path (layer paths are relative to the image root)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerRefused(f"{what} {name!r} points outside the image root")
    return parts


def apply_layer(blob: Path, rootfs: Path, layer: str, budget: UnpackBudget | None = None) -> None:
    """Apply one layer (plain, gzip or zstd tar) on top of rootfs. `budget`: the image's, shared
    by its layers (None: a budget of this layer's own, with the default limits)."""
    budget = budget or UnpackBudget()
    devices: list[str] = []
    try:
        with Tree(rootfs, budget.limits.max_tracked) as tree, open_layer(blob, budget) as tar:
            for count, member in enumerate(entries(tar), 1):
                budget.check_entries(count)
                _apply_member(tar, member, tree, budget, devices)
            tree.finish()
        if devices:
            shown = ", ".join(devices[:5]) + (f" and {len(devices) - 5} more" if len(devices) > 5 else "")
            log.info("layer %s: dropped %d device node(s): %s", layer, len(devices), shown)
    except LayerRefused as exc:
        raise _refused(layer, str(exc)) from None
    except LayerMalformed as exc:
        raise _bad_layer(layer, str(exc)) from None
    except NodeLacks as exc:
        raise ImageError(f"layer {layer} {exc}") from None  # transient: the operator can install it
    except RecursionError:  # tarfile reads a run of extended headers recursively
        raise _bad_layer(layer, "too many extended headers in a row") from None
    except (tarfile.TarError, EOFError, OSError, OverflowError, ValueError) as exc:
        # OverflowError, ValueError: an owner, time or name the kernel cannot take (a uid past
        # 2**32, an mtime of 1e300, a NUL in a pax path).
        if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise ImageError(f"no space left to unpack layer {layer} on the agent's disk") from None
        raise _bad_layer(layer, str(exc) or type(exc).__name__) from None


def _apply_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tree: Tree, budget: UnpackBudget,
                  devices: list[str]) -> None:
    budget.check_path(f"entry {_short(member.name)}", member.name)
    parts = _parts(member.name)
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
            raise LayerRefused(f"whiteout {member.name!r} is aimed at {aim}, not at a file in it")
    if base == OPAQUE:
        # An opaque dir hides everything lower layers put in it, not what this layer adds.
        tree.opaque(parts[:-1], member.name)
        return
    if base.startswith(AUFS_META):
        return  # aufs' own hard-link bookkeeping (.wh..wh.plnk, ...): never image content
    if base.startswith(WHITEOUT):
        tree.whiteout(parts[:-1], base[len(WHITEOUT):], member.name)
        return
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk() or member.isfifo()):
        return  # sockets and unknown types have no meaning in an image
    if member.issym() or member.islnk():
        budget.check_path(f"the target of {_short(member.name)}", member.linkname)
    dir_fd, key = tree.parent(parts[:-1], member.name)
    path = f"{key}/{base}" if key else base
    existing = lstat_at(dir_fd, base)
    if existing and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        tree.remove(dir_fd, base)
    tree.track(path)
    if member.isdir():
        tree.make_dir(dir_fd, base, path, member)
    elif member.isreg():
        tree.write_file(dir_fd, base, tar.extractfile(member), member)
    elif member.issym():
        tree.symlink(dir_fd, base, member)
    elif member.islnk():
        tree.hardlink(dir_fd, base, _parts(member.linkname, f"hard link {member.name!r} to"), member)
    else:
        tree.fifo(dir_fd, base, member)


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
