"""After an agent restart (or in a one-shot CLI): adopting the VMs that kept running, settling
the ones that ended meanwhile, removing what a crash left half-made, and putting every live
VM's network back as a new VM's would be.

A part of MicroVmRuntime, a mixin for the reason given in runtime_boot.py: it fills the VM
table the other parts work on and starts their watchers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from nodes.agent.state import VmInfo, is_locked
from protocol.vocabulary import VM_ENDED_STATES


class VmRecovery:
    """Needs of its host class: `store`, `vmm`, `network`, `volumes`, `_locks`, `_gpus`
    (runtime_gpus.VmGpus), `_infos`, `_ensure_network()`, `_release()`, `_set()`, the boot's
    `_publish()`, and the watcher's `_refresh()` and `_watch()`."""

    async def recover(self) -> list[VmInfo]:
        """Adopt live VMs, settle dead ones, and remove what a crash left behind."""
        names = await asyncio.to_thread(self.store.names)
        known: set[str] = set()
        for name in names:
            paths = self.store.paths(name)
            if await asyncio.to_thread(is_locked, self._locks.path(name)):
                known.add(name)  # another process is starting or stopping it right now
                continue
            async with self._locks.hold(name):
                info = await asyncio.to_thread(self.store.read_info, name)
                alive = await asyncio.to_thread(self.vmm.alive, paths.dir)
                launched = alive or (info is not None and info.pid is not None) or await asyncio.to_thread(paths.pidfile.exists)
                if info is None or (not launched and info.state not in VM_ENDED_STATES):
                    # Half-created: the start that made it died before QEMU ran; its caller retries.
                    await self._release(name)
                    await asyncio.to_thread(self.store.delete, name)
                    continue
                known.add(name)
                self._infos[name] = info
                info = await self._refresh(name, paths, info)
                if info.state not in VM_ENDED_STATES:
                    self._watch(name)
        # A VM another process holds the lock of (a `vm run` under way) counts as live.
        await self._gpus.recover(n for n in known if n not in self._infos or self._infos[n].state not in VM_ENDED_STATES)
        for orphan in await self.network.owned() - known:
            await self.network.remove(orphan)
        if self.volumes is not None:
            await self.volumes.sweep()  # volumes a crash left half-formatted
        return [self._infos[n] for n in sorted(known) if n in self._infos]

    async def reassert_networks(self) -> None:
        """Every live VM's network checked as a new VM's is: rules someone flushed, or the new
        rules of an upgraded agent, are in place again without restarting a VM (the leases keep
        its address and host ports). The daemon calls it after recover(); the one-shot CLI does
        not, since its options need not be the daemon's: a `vm ls` without the daemon's
        --subnet would move a running VM to the default one."""
        for name in sorted(self._infos):
            async with self._locks.hold(name):
                info = self._infos.get(name)
                if info is None or info.state in VM_ENDED_STATES:
                    continue
                spec = await asyncio.to_thread(self.store.read_spec, name) or {}
                await self._ensure_network()
                await self.network.ensure_tap(name)
                traffic_port = spec.get("traffic_port")
                host_ports = await self._publish(name, traffic_port, spec.get("ports"))
                host_port = host_ports.get(str(traffic_port))
                info = self._infos.get(name)  # its watcher may have moved it on meanwhile
                if info is not None and (info.host_ports, info.host_port) != (host_ports, host_port):
                    # A VM an older agent started knows only its traffic port's; a lost lease
                    # file gave a port anew: the next report tells the plane where they are.
                    await self._set(replace(info, host_ports=host_ports, host_port=host_port))
