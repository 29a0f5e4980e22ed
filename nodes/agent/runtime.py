"""The `Runtime` interface and its only shipped implementation: one QEMU microVM per replica.

MicroVmRuntime holds its far sides, each a Protocol: the image store (images.ImageStore), the
host network (network.Network), the VM monitor (vmm.Vmm), the guest kit and accelerator probe,
and the health check. It builds none of them: build_runtime (runtime_build.py) puts the real
ones together, and tests hand it fakes (tests/agent/fakes.py).

It holds no state that is not on disk: every VM's files live in `<data_dir>/vms/<name>/` (see
state.py), QEMU runs detached, and a new runtime (after a crash, or a one-shot CLI) rebuilds
its view from those files with `recover()`.

Its parts, each a module: the boot pipeline (runtime_boot.py), the watcher that derives a live
VM's state (runtime_watch.py), the health checks of running VMs (runtime_health.py), recovery
after a restart (runtime_recover.py), the log reads (runtime_logs.py) and the GPUs
(runtime_gpus.py) and the volumes (runtime_volumes.py). This module keeps the VM table they share
(infos, events, locks), stop and remove, and the views.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from nodes.agent.errors import AgentError
from nodes.agent.events import EventHub, RuntimeEvent
from nodes.agent.gpu.host import GpuHost
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR
from nodes.agent.health import check_once, wait_healthy
from nodes.agent.images import ImageStore
from nodes.agent.lifecycle import StatusReader
from nodes.agent.logs import LogLine, LogRecords
from nodes.agent.locks import VmLocks
from nodes.agent.network import Network
from nodes.agent.runtime_boot import VmBoot
from nodes.agent.runtime_gpus import VmGpus
from nodes.agent.runtime_health import DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL_S, VmHealth
from nodes.agent.runtime_logs import VmLogReads
from nodes.agent.runtime_recover import VmRecovery
from nodes.agent.runtime_volumes import VmVolumes
from nodes.agent.runtime_watch import VmWatch
from nodes.agent.state import StateStore, VmInfo, is_locked, validate_name
from nodes.agent.vmm import Vmm
from nodes.agent.volumes import VolumeBackend
from protocol.wire import ReplicaSpec
from protocol.vocabulary import FAILING, PASSING, RUNNING, STOPPING, VM_ENDED_STATES

# The guest kit for a kit cache dir, and the accelerator probe for (kit cache, kit):
# guest.kit.ensure_kit and vmm.accel.probe_accel, or a test's fakes.
KitProvider = Callable[[Path], Awaitable[Any]]
AccelProvider = Callable[[Path, Any], Awaitable[Any]]


def _kit_present(kit: Any) -> bool:
    # The kit cache is shared: another agent on the host may rebuild it (a new /init, a new
    # kernel) and prune the kit this runtime was handed earlier. A long-lived runtime asks
    # for the current kit again rather than launch QEMU on files that are gone.
    paths = [getattr(kit, attr, None) for attr in ("kernel", "initrd")]
    return all(p.exists() for p in paths if isinstance(p, Path))


def _announced(info: VmInfo) -> tuple:
    """What a VM's events say: a change to any of it is an event."""
    return info.state, info.reason, info.exit_code, info.health, info.health_reason


class Runtime(Protocol):
    async def start(self, spec: ReplicaSpec) -> VmInfo: ...
    async def stop(self, name: str, *, timeout: float | None = None) -> VmInfo: ...
    async def remove(self, name: str) -> None: ...
    async def list(self) -> list[VmInfo]: ...
    def logs(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogLine]: ...
    def log_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[list[LogLine]]: ...
    def log_record_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogRecords]: ...
    def log_heads(self) -> dict[str, int]: ...
    async def trim_logs(self, name: str, upto_seq: int) -> int: ...
    def events(self) -> AsyncIterator[RuntimeEvent]: ...


class MicroVmRuntime(VmBoot, VmRecovery, VmWatch, VmHealth, VmLogReads, VmVolumes):
    """`kit_cache` is the host-wide dir the guest kit and the accelerator probe are kept in
    (shared by every runtime on the host). `netns` is the namespace the VMs' network lives in
    (the `network` must manage the same one): QEMU runs in it and the health check connects
    from it, while image pulls and the kit build stay in this process's own namespace.
    `health_check` gates a start; `health_probe` (one attempt) checks a running VM every
    `health_interval` seconds, and `health_failures` failures in a row make it "failing".
    `volumes`: where the VMs' persistent volumes live (runtime_volumes.py); None: a node that
    refuses every spec naming one."""

    def __init__(
        self,
        data_dir: Path,
        *,
        images: ImageStore,
        network: Network,
        vmm: Vmm,
        kit_provider: KitProvider,
        accel_provider: AccelProvider,
        health_check: Callable[..., Awaitable[None]] = wait_healthy,
        health_probe: Callable[..., Awaitable[str | None]] = check_once,
        kit_cache: Path = DEFAULT_CACHE_DIR,
        netns: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.1,
        boot_timeout: float = 180.0,
        health_timeout: float = 60.0,
        health_interval: float = DEFAULT_HEALTH_INTERVAL_S,
        health_failures: int = DEFAULT_HEALTH_FAILURES,
        stop_timeout: float = 10.0,
        gpus: GpuHost | None = None,
        volumes: VolumeBackend | None = None,
    ):
        if not health_interval > 0 or health_failures < 1:
            raise AgentError("the health interval must be positive and the failures at least 1", permanent=True)
        self.data_dir = Path(data_dir)
        self.kit_cache = Path(kit_cache)
        self.netns = netns
        self.store = StateStore(self.data_dir)
        self.images = images
        self.network = network
        self._kit_provider = kit_provider
        self._accel_provider = accel_provider
        self.vmm = vmm
        self._health_check = health_check
        self._health_probe = health_probe
        self._clock = clock
        self.poll_interval = poll_interval
        self.boot_timeout = boot_timeout
        self.health_timeout = health_timeout
        self.health_interval = health_interval
        self.health_failures = health_failures
        self.stop_timeout = stop_timeout
        self._gpus = VmGpus(gpus)
        self.volumes = volumes
        self._locks = VmLocks(self.data_dir / "locks")
        self._host_lock = asyncio.Lock()
        self._host: tuple[Any, Any] | None = None
        self._network_ready = False
        self._infos: dict[str, VmInfo] = {}
        self._log_heads: dict[str, int] = {}
        self._status: dict[str, StatusReader] = {}
        self._converted: dict[str, asyncio.Event] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._checkers: dict[str, asyncio.Task] = {}
        self._hub = EventHub()
        self._set_lock = asyncio.Lock()

    # -- host: guest kit, accelerator, network (once per runtime) ---------------------------
    async def host(self) -> tuple[Any, Any]:
        async with self._host_lock:
            if self._host is None or not await asyncio.to_thread(_kit_present, self._host[0]):
                kit = await self._kit_provider(self.kit_cache)
                accel = await self._accel_provider(self.kit_cache, kit)
                self._host = (kit, accel)
            return self._host

    async def _ensure_network(self) -> None:
        if not self._network_ready:
            await self.network.ensure_host()
            self._network_ready = True

    # -- events ------------------------------------------------------------------------------
    def events(self) -> AsyncIterator[RuntimeEvent]:
        return self._hub.stream()

    def subscribe(self) -> asyncio.Queue:
        """A queue that receives every event from now on (events() without the generator)."""
        return self._hub.subscribe()

    def _emit(self, event: RuntimeEvent) -> None:
        self._hub.emit(event)

    async def _set(self, info: VmInfo, *, persist: bool = True) -> VmInfo:
        # On disk first, then visible and announced with no await between: whoever reads a
        # state (get, list) can rely on its event having been emitted. One lock keeps the
        # start path, the watcher and the health checker from landing their writes out of order.
        async with self._set_lock:
            old = self._infos.get(info.name)
            if old is not None:
                # Health is the checker's to change (_set_health): a writer holding an older
                # copy of the info must not undo the checker's verdict.
                info = replace(info, health=old.health, health_reason=old.health_reason)
            return await self._store(info, old, persist)

    async def _set_health(self, name: str, health: str, reason: str) -> VmInfo | None:
        """The health checker's verdict on a VM that is still running; announced only when it
        changes what the VM says (its health, or the reason it fails)."""
        async with self._set_lock:
            old = self._infos.get(name)
            if old is None or old.state != RUNNING or (old.health, old.health_reason) == (health, reason):
                return old
            return await self._store(replace(old, health=health, health_reason=reason), old, True)

    async def _store(self, info: VmInfo, old: VmInfo | None, persist: bool) -> VmInfo:
        if info.state != RUNNING:
            info = replace(info, health=PASSING, health_reason="")  # health is a running VM's only
        if persist:
            await asyncio.to_thread(self.store.write_info, info)
        self._infos[info.name] = info
        if old is None or _announced(old) != _announced(info):
            self._emit(self._event(info))
        self._changed.setdefault(info.name, asyncio.Event()).set()
        return info

    def _event(self, info: VmInfo) -> RuntimeEvent:
        if info.health == FAILING:
            return RuntimeEvent(info.name, info.state, self._clock(), info.health_reason, info.exit_code,
                                phase="health")
        return RuntimeEvent(info.name, info.state, self._clock(), info.reason, info.exit_code)

    # -- stop / remove -----------------------------------------------------------------------
    async def stop(self, name: str, *, timeout: float | None = None) -> VmInfo:
        """ACPI power-off, then a kill after `timeout` seconds (default: the runtime's
        stop_timeout); the plane sets it per deployment."""
        async with self._locks.hold(validate_name(name)):
            return await self._stop(name, timeout)

    async def _stop(self, name: str, timeout: float | None = None) -> VmInfo:
        paths = self.store.paths(name)
        info = await self._current(name)
        if info is None:
            raise AgentError(f"no VM named {name}", permanent=True)
        await self._unwatch(name)
        if info.state not in VM_ENDED_STATES:
            info = await self._set(replace(info, state=STOPPING, stop_requested=True))
        await self.vmm.stop(paths.dir, timeout=self.stop_timeout if timeout is None else timeout)
        info = await self._refresh(name, paths, info)
        await self._release(name)
        return info

    async def remove(self, name: str) -> None:
        async with self._locks.hold(validate_name(name)):
            if await self._current(name) is None:
                raise AgentError(f"no VM named {name}", permanent=True)
            await self._stop(name)
            await asyncio.to_thread(self.store.delete, name)
            self._infos.pop(name, None)
            self._log_heads.pop(name, None)
            self._changed.pop(name, None)
            self._status.pop(name, None)
        await self._evict()

    async def _evict(self) -> None:
        """Give the image cache a chance to shrink once a VM no longer pins its image."""
        in_use = set()
        for other in await asyncio.to_thread(self.store.names):
            info = await asyncio.to_thread(self.store.read_info, other)
            if info is not None and info.digest:
                in_use.add(info.digest)
        try:
            await self.images.evict(in_use=in_use)
        except AgentError:
            pass  # eviction is housekeeping: a failure here must not fail the removal

    async def _release(self, name: str) -> None:
        paths = self.store.paths(name)
        await self.network.remove(name)
        await asyncio.to_thread(paths.overlay.unlink, missing_ok=True)
        await self._gpus.release(name)

    # -- views -------------------------------------------------------------------------------
    async def _current(self, name: str) -> VmInfo | None:
        if name in self._watchers and not self._watchers[name].done():
            return self._infos[name]
        info = await asyncio.to_thread(self.store.read_info, name)
        if info is None:
            return None
        # A reader writes the state it derived only while nobody operates on the VM. A holder
        # of the lock (a start, stop or remove, in this process or another) writes its own: a
        # reader's write landing during a remove's rmtree would leave the dir behind, and the
        # removed VM listed again as `stopped`.
        mine = not self._locks.held(name) and not await asyncio.to_thread(is_locked, self._locks.path(name))
        return await self._refresh(name, self.store.paths(name), info, persist=mine)

    async def get(self, name: str) -> VmInfo | None:
        return await self._current(validate_name(name))

    async def list(self) -> list[VmInfo]:
        out = []
        for name in await asyncio.to_thread(self.store.names):
            info = await self._current(name)
            if info is not None:
                out.append(info)
        return out

    async def close(self) -> None:
        """Stop watching (VMs keep running: they are adopted by the next runtime)."""
        for name in sorted(self._watchers.keys() | self._checkers.keys()):
            await self._unwatch(name)
