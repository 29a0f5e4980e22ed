"""The interface every volume backend offers the runtime (nodes/agent/runtime.py), and what it
answers with. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from protocol.wire import VolumeMount


@dataclass(frozen=True)
class VolumeAttach:
    """How QEMU opens one volume. `source` is the part of `-drive` that names the data
    (`file=/path,format=raw` here; `file=rbd:pool/image,format=raw` for a Ceph backend), already
    escaped for QEMU's option syntax. `cache` is the host cache mode the backend can honour:
    "none" (O_DIRECT: the guest's page cache is the only one, and its flushes reach the disk)
    or "writeback" where the filesystem refuses O_DIRECT (tmpfs); flushes still reach the disk."""

    volume_id: str
    source: str
    cache: str = "none"


@dataclass(frozen=True)
class VolumeUsage:
    """What the heartbeat carries: every volume the node holds, {volume_id: size in GiB}, and
    the GiB a new volume may still take (free space minus what the sparse volumes may still
    grow into; never negative)."""

    volumes: dict[str, int] = field(default_factory=dict)
    free_gib: float = 0.0


class VolumeBackend(Protocol):
    async def ensure(self, volume: VolumeMount) -> VolumeAttach:
        """The volume ready to attach: made (empty, formatted) if new, never reformatted if it
        exists. Raises AgentError (permanent) for a size other than the one it was made with."""
        ...

    async def delete(self, volume_id: str) -> bool:
        """Erase it: blocks discarded, then gone. True when it is gone (or never was); False
        while a process (a VM's QEMU) still has it open: nothing is erased then."""
        ...

    async def usage(self) -> VolumeUsage: ...

    async def sweep(self) -> None:
        """Remove what a crash left half-made (never a finished volume)."""
        ...
