"""A VM's volumes: checked with its spec, made ready before its boot, and erased only once no
VM of this node uses them.

A part of MicroVmRuntime, a mixin for the reason runtime_boot.py gives: whether a volume is in
use is a question about the VM table (each VM's stored spec and its state), and the volume
backend (volumes.VolumeBackend) knows nothing of VMs.

Which VMs use a volume is read from disk, not from memory: every VM's spec.json names its
volumes, and a VM is a user until its QEMU is gone (an ended state). So an agent restarted
after a SIGKILL, or a one-shot CLI beside the daemon, knows the same users as the process that
started them. The backend adds its own check below this one: a file some QEMU holds open is
never erased (files.py).
"""

from __future__ import annotations

import asyncio
import logging

from nodes.agent.errors import AgentError
from nodes.agent.vmm.cmdline import GuestVolume, volume_serial
from protocol.wire import ProtocolError, ReplicaSpec
from protocol.vocabulary import VM_ENDED_STATES

log = logging.getLogger(__name__)


def volumes_problem(spec: ReplicaSpec) -> str | None:
    """Why a spec's volumes cannot be attached, or None: the wire's own checks, which a spec
    that did not come through decode() (the CLI's, a test's) has not had."""
    try:
        spec.check()
        for volume in spec.volumes:
            volume.check()
    except ProtocolError as exc:
        return str(exc)
    return None


class VmVolumes:
    """Needs of its host class: `volumes` (a VolumeBackend or None), `store`, `_current()`."""

    def _check_volumes(self, spec: ReplicaSpec) -> None:
        problem = volumes_problem(spec)
        if problem is not None:
            raise AgentError(f"volumes refused: {problem}", permanent=True)
        if spec.volumes and self.volumes is None:
            raise AgentError("this node keeps no volumes, and the replica asks for "
                             f"{len(spec.volumes)}", permanent=True)

    async def _attach_volumes(self, spec: ReplicaSpec) -> tuple[GuestVolume, ...]:
        """Each volume made ready (made and formatted if new), in the spec's order: the guest
        finds the i-th by serial volume_serial(i)."""
        out = []
        for i, volume in enumerate(spec.volumes):
            attach = await self.volumes.ensure(volume)
            out.append(GuestVolume(serial=volume_serial(i), source=attach.source, mount_path=volume.mount_path,
                                   readonly=volume.mode == "ro", cache=attach.cache))
        return tuple(out)

    async def volume_users(self, volume_id: str) -> list[str]:
        """The VMs of this node that have the volume attached: every VM whose spec names it and
        whose QEMU may still run (starting VMs included: their spec is written first)."""
        users = []
        for name in await asyncio.to_thread(self.store.names):
            spec = await asyncio.to_thread(self.store.read_spec, name) or {}
            if not any(isinstance(v, dict) and v.get("volume_id") == volume_id for v in spec.get("volumes") or ()):
                continue
            info = await self._current(name)
            if info is None or info.state not in VM_ENDED_STATES:
                users.append(name)
        return users

    async def delete_volume(self, volume_id: str) -> bool:
        """volume.delete: True once the volume is erased (or was never here); False, with
        nothing erased, while a VM uses it."""
        if self.volumes is None:
            return True
        users = await self.volume_users(volume_id)
        if users:
            log.info("volume %s not erased: attached to %s", volume_id, ", ".join(users))
            return False
        if not await self.volumes.delete(volume_id):
            log.warning("volume %s not erased: a process still holds it open", volume_id)
            return False
        return True
