"""A layer blob as a stream of tar entries, metered against the image's UnpackBudget.

We decompress ourselves (gzip in-process, zstd through the `zstd` CLI, as Python 3.11 has no
zstd) and hand tarfile the plain stream through a meter, so every byte that comes out of
the decompressor is counted before anything is done with it: a bomb stops at the limit, in
the middle of a file if need be, whichever layer it is in. tarfile is read in stream mode,
one entry at a time, and is kept from holding more than one entry's header in memory.
"""

import contextlib
import gzip
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

from nodes.agent.oci.limits import LayerMalformed, LayerRefused, NodeLacks, UnpackBudget, show_size

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


class _Metered:
    """A read-only stream whose every byte is charged to the budget as it is read."""

    def __init__(self, raw, budget: UnpackBudget):
        self._raw = raw
        self._budget = budget

    def read(self, n: int = -1) -> bytes:
        # Never an unbounded read: a decompressor asked for "all of it" would fill memory first.
        data = self._raw.read(n if 0 <= n <= _CHUNK else _CHUNK)
        self._budget.charge(len(data))
        return data


def _tarinfo_class(budget: UnpackBudget) -> type[tarfile.TarInfo]:
    """tarfile's TarInfo, kept from reading what it would hold in memory unbounded.

    tarfile reads a pax or GNU long-name header whole before it returns the entry it
    describes, and a sparse file's map (old GNU, pax 0.0, 0.1, 1.0) into a list of numbers
    that can be ten times the bytes it came from. No image builder (Docker, BuildKit, buildah,
    kaniko: Go's archive/tar cannot write sparse files) puts sparse files in a layer, so they
    are refused rather than bounded. These are tarfile's private hooks (Python 3.11 to 3.13);
    tests/agent/test_layer_limits.py notices if one stops being called."""
    limit = budget.limits.max_header

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_):
            if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > limit:
                raise LayerRefused(f"an extended tar header is {show_size(self.size)}, more than this node's "
                                   f"limit of {show_size(limit)}")
            return super()._proc_member(tarfile_)

        def _sparse(self, *args):
            raise LayerRefused("it holds a sparse file, which image layers never need (no image builder "
                               "writes one)")

        _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _sparse

    return BoundedTarInfo


def entries(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one at a time. tarfile keeps every member it has read in `members`, even
    in stream mode: a million-entry layer would hold a million TarInfos and their headers."""
    while (member := tar.next()) is not None:
        tar.members.clear()
        yield member


@contextlib.contextmanager
def open_layer(blob: Path, budget: UnpackBudget) -> Iterator[tarfile.TarFile]:
    """The layer as a streaming tarfile: plain, gzip, or zstd."""
    with open(blob, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(ZSTD_MAGIC):
            with _zstd(blob, budget) as tar:
                yield tar
            return
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic.startswith(GZIP_MAGIC) else raw
        with tarfile.open(fileobj=_Metered(stream, budget), mode="r|", tarinfo=_tarinfo_class(budget)) as tar:
            yield tar


@contextlib.contextmanager
def _zstd(blob: Path, budget: UnpackBudget) -> Iterator[tarfile.TarFile]:
    try:
        proc = subprocess.Popen(["zstd", "-dcq", str(blob)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise NodeLacks("is zstd-compressed and zstd is not installed on this node (run `make sysdeps`)") from None
    metered = _Metered(proc.stdout, budget)
    done = False
    try:
        with tarfile.open(fileobj=metered, mode="r|", tarinfo=_tarinfo_class(budget)) as tar:
            yield tar
        # tar stops at its end marker; zstd may still be writing padding, and a bomb can hide
        # there as well as anywhere: read the rest through the meter too.
        while metered.read(_CHUNK):
            pass
        done = True
    finally:
        if not done:
            proc.kill()  # a refused or broken layer: nothing more of it is wanted
        proc.stdout.close()
        stderr = proc.stderr.read(64 << 10).decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise LayerMalformed(f"zstd: {stderr or f'exit {code}'}")
