"""Watching a live VM: the passes that convert its log and derive its state from its files and
QEMU's liveness, stopping a VM whose guest says its workload ended, and waiting for a state. A
part of MicroVmRuntime, kept apart as runtime_logs.py is: it acts only through the VM's dir,
the vmm and the runtime's state setter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Callable

from nodes.agent.errors import AgentError
from nodes.agent.lifecycle import StatusReader, derive, guest_ended
from nodes.agent.logs import convert, last_seq
from nodes.agent.state import VmInfo, VmPaths
from protocol.vocabulary import BOOTING, STARTING, VM_ENDED_STATES

# Watch pass interval while a VM boots (see _watch_loop); running VMs use poll_interval.
BOOT_POLL_S = 0.03


def _read_pid(paths: VmPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


class VmWatch:
    """Needs of its host class: `store`, `vmm`, `poll_interval`, `stop_timeout`, `_clock`,
    `_infos`, `_changed` (an asyncio.Event per VM, set by `_set`), `_watchers`, `_status`,
    `_log_heads`, `_converted`, `_set()`, `_gpus` (runtime_gpus.VmGpus) and the health
    checker's `_check_health()` and `_uncheck_health()`."""

    def _watch(self, name: str) -> None:
        """Watch a launched VM, and check its health while it runs (runtime_health.py)."""
        if name not in self._watchers or self._watchers[name].done():
            self._watchers[name] = asyncio.create_task(self._watch_loop(name), name=f"watch-{name}")
        self._check_health(name)

    async def _unwatch(self, name: str) -> None:
        await self._uncheck_health(name)
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch_loop(self, name: str) -> None:
        paths = self.store.paths(name)
        while True:
            info = await self._refresh(name, paths, self._infos[name])
            if info.state in VM_ENDED_STATES:
                await self._gpus.release(name)  # the next tenant must not wait for a vm rm
                return
            if guest_ended(info):
                # The guest says its workload is over, and its VM still runs: the VM is stopped
                # here and now (as /init would power it off), and only QEMU's end, seen by the
                # next pass, makes the VM `stopped` or `failed`.
                try:
                    await self.vmm.stop(paths.dir, timeout=self.stop_timeout)
                except AgentError:
                    await asyncio.sleep(self.poll_interval)  # still alive: tried again next pass
                continue
            # Until the workload runs, a start() waits on this loop to see the start event: a
            # tighter pass there is start latency saved, and a booting VM has few logs to convert.
            booting = info.state in (BOOTING, STARTING)
            await asyncio.sleep(min(self.poll_interval, BOOT_POLL_S) if booting else self.poll_interval)

    async def _refresh(self, name: str, paths: VmPaths, info: VmInfo, *, persist: bool = True) -> VmInfo:
        """One catch-up pass: convert new log lines, derive state from status.raw + liveness."""
        alive = await asyncio.to_thread(self.vmm.alive, paths.dir)
        if alive and info.pid is None:
            # Launched, but the launcher died before recording the pid: adopt it from the pidfile.
            info = replace(info, pid=await asyncio.to_thread(_read_pid, paths))
        status = await asyncio.to_thread(self._read_status, name, paths)
        # Liveness is read before the final conversion so no byte written before death is missed.
        lines = await asyncio.to_thread(convert, paths, final=not alive and info.pid is not None, clock=self._clock,
                                        keep=False)
        if lines:
            self._log_heads[name] = lines[-1].seq
            self._converted.pop(name, asyncio.Event()).set()  # wakes this VM's log followers
        elif name not in self._log_heads:  # adopted: its log may hold lines the plane lacks
            self._log_heads[name] = await asyncio.to_thread(last_seq, paths)
        new = await asyncio.to_thread(derive, info, status, alive, paths)
        if not alive and new.pid is not None and new.state in VM_ENDED_STATES:
            new = replace(new, pid=None)
        if new != info or name not in self._infos:
            new = await self._set(new, persist=persist)
        return new

    def _read_status(self, name: str, paths: VmPaths):
        # Blocking (file reads): called through asyncio.to_thread. One reader per VM, dropped
        # whenever the VM's dir is made afresh (start) or deleted (remove).
        return self._status.setdefault(name, StatusReader()).read(paths.status)

    async def _wait_for(self, name: str, cond: Callable[[VmInfo], bool], timeout: float | None, message: str) -> VmInfo:
        event = self._changed.setdefault(name, asyncio.Event())
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self._infos[name]
            if cond(info):
                return info
            event.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise AgentError(message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
