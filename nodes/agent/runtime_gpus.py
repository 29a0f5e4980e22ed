"""The GPUs of MicroVmRuntime's VMs: prepared (bound to VFIO, planned into a q35 machine) before
a boot, given back once a VM's QEMU is gone, and settled after an agent restart.

A small object the runtime holds, not a part of its class as the watcher and the log reads
are: it needs nothing of the runtime's VM table but the names of the VMs still live, which
each call is handed. A node without GPUs has `host` None and refuses any spec that asks for some.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nodes.agent.errors import AgentError
from nodes.agent.gpu.host import GpuHost, Prepared
from protocol.wire import ReplicaSpec


class VmGpus:
    def __init__(self, host: GpuHost | None):
        self.host = host

    async def prepare(self, spec: ReplicaSpec, live: Iterable[str]) -> Prepared:
        """What the VM boots with: its GPUs bound, and the machine (vcpus, memory) planned
        around them. `live`: the VMs that still hold GPUs legitimately."""
        if not spec.gpu_bdfs:
            return Prepared(None, spec.vcpus, spec.memory_mib)
        if self.host is None:
            raise AgentError(f"this node has no GPUs to give, and the replica asks for {len(spec.gpu_bdfs)} "
                             f"({', '.join(spec.gpu_bdfs)}): a VM never boots without the GPUs it was given",
                             permanent=True)
        # GPUs still bound for a VM that is gone (one that ended by itself) go back first.
        await self.recover(live)
        return await asyncio.to_thread(self.host.prepare, spec.name, list(spec.gpu_bdfs), vcpus=spec.vcpus,
                                       memory_mib=spec.memory_mib)

    async def release(self, name: str) -> None:
        """Reset and give back what the VM had: only once its QEMU is gone."""
        if self.host is not None:
            await asyncio.to_thread(self.host.detach, name)

    async def recover(self, live: Iterable[str]) -> None:
        """Give back every GPU bound for a VM not in `live`."""
        if self.host is not None:
            await asyncio.to_thread(self.host.recover, set(live))
