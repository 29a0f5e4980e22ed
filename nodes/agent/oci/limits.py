"""How much one image may unpack on a node, and the refusals of the unpacking code.

A layer is a few compressed bytes that a customer chose; what it expands to is not. gzip and
zstd shrink runs of zeros a thousandfold and more, a tar stream can hold a million empty
entries in a few kilobytes, and a name or an extended header can be as long as the writer
likes. Each of those is counted as it is read, and the pull stops at the limit with the reason
instead of filling the node's disk, its memory or its inode table.
"""

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


class LayerRefused(Exception):
    """An entry or a layer that a node will not unpack; apply_layer turns it into the pull's
    permanent ImageError, naming the layer."""


class LayerMalformed(Exception):
    """A layer that is not a tar stream we can read to its end."""


class NodeLacks(Exception):
    """The node lacks something the layer needs (a tool): not the image's fault, so the pull
    may be tried again once the operator fixed it."""


@dataclass(frozen=True)
class UnpackLimits:
    """max_bytes: what all layers of one image may expand to, counted as the decompressed tar
      stream (file contents, headers and padding; a zstd stream's bytes after the tar's end
      marker too). The agent's `--max-unpacked-bytes`.
    max_entries: tar entries in one layer (every entry counts: files, directories, links,
      whiteouts, the dropped device nodes).
    max_path: bytes in an entry's name, and in a symlink's or hard link's target (PATH_MAX:
      the guest could not open a longer one anyway).
    max_header: bytes in one pax or GNU long-name header, which tarfile reads whole into
      memory before we see the entry it describes.
    max_tracked: bytes of the paths one layer's entries are remembered by, for its opaque
      whiteouts and its directory pass (a legitimate million-entry layer needs about 100 MiB;
      a million 4,096-byte names would hold 4 GiB)."""

    max_bytes: int = 64 * GiB
    max_entries: int = 1_000_000
    max_path: int = 4096
    max_header: int = 1 * MiB
    max_tracked: int = 256 * MiB


def show_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class UnpackBudget:
    """What one image has unpacked so far: one budget per image, shared by its layers."""

    def __init__(self, limits: UnpackLimits | None = None):
        self.limits = limits or UnpackLimits()
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_bytes:
            raise LayerRefused(f"the image unpacks to more than {show_size(self.limits.max_bytes)}, this node's "
                               "limit for one image (gantry-agent --max-unpacked-bytes)")

    def check_entries(self, count: int) -> None:
        if count > self.limits.max_entries:
            raise LayerRefused(f"the layer has more than {self.limits.max_entries} entries, this node's limit "
                               "for one layer")

    def check_path(self, what: str, value: str) -> None:
        length = len(value.encode("utf-8", "surrogateescape"))
        if length > self.limits.max_path:
            raise LayerRefused(f"{what} is {length} bytes long, more than this node's limit of "
                               f"{self.limits.max_path}")
