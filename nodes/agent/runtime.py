"""The `Runtime` interface and its only shipped implementation: one QEMU microVM per replica.

MicroVmRuntime composes the image store, the host network, the guest kit and the vmm. It holds
no state that is not on disk: every VM's files live in `<data_dir>/vms/<name>/` (see state.py),
QEMU runs detached, and a new runtime (after a crash, or a one-shot CLI) rebuilds its view from
those files with `recover()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol

from nodes.agent.errors import AgentError
from nodes.agent.events import EventHub, RuntimeEvent
from nodes.agent.gpu.host import GpuHost, Prepared
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR
from nodes.agent.lifecycle import StatusReader, guest_command, guest_ended
from nodes.agent.logs import LogLine, LogRecords, convert
from nodes.agent.locks import VmLocks
from nodes.agent.runtime_logs import VmLogReads
from nodes.agent.runtime_watch import VmWatch
from nodes.agent.state import StateStore, VmInfo, VmPaths, is_locked, validate_name
from nodes.protocol import ReplicaSpec
from nodes.vocabulary import VM_ENDED_STATES as TERMINAL_STATES

# A workload's port usually refuses for a moment while it starts: failures within this long
# are the normal start, not news for the plane.
HEALTH_QUIET_S = 2.0


def _kit_present(kit: Any) -> bool:
    # The kit cache is shared: another agent on the host may rebuild it (a new /init, a new
    # kernel) and prune the kit this runtime was handed earlier. A long-lived runtime asks
    # for the current kit again rather than launch QEMU on files that are gone.
    paths = [getattr(kit, attr, None) for attr in ("kernel", "initrd")]
    return all(p.exists() for p in paths if isinstance(p, Path))


class Runtime(Protocol):
    async def start(self, spec: ReplicaSpec) -> VmInfo: ...
    async def stop(self, name: str, *, timeout: float | None = None) -> VmInfo: ...
    async def remove(self, name: str) -> None: ...
    async def list(self) -> list[VmInfo]: ...
    def logs(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogLine]: ...
    def log_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[list[LogLine]]: ...
    def log_record_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogRecords]: ...
    def log_heads(self) -> dict[str, int]:
        """The last seq in each known VM's log (what a heartbeat tells the plane)."""
        return dict(self._log_heads)

    async def trim_logs(self, name: str, upto_seq: int) -> int: ...
    def events(self) -> AsyncIterator[RuntimeEvent]: ...


class MicroVmRuntime(VmWatch, VmLogReads):
    """`kit_cache` is the host-wide dir the guest kit and the accelerator probe are kept in
    (shared by every runtime on the host). `netns` is the namespace the VMs' network lives in
    (the `network` must manage the same one): QEMU runs in it and the health check connects
    from it, while image pulls and the kit build stay in this process's own namespace."""

    def __init__(
        self,
        data_dir: Path,
        *,
        images: Any,
        network: Any,
        kit_cache: Path = DEFAULT_CACHE_DIR,
        netns: str | None = None,
        kit_provider: Callable[[Path], Any] | None = None,
        accel_provider: Callable[[Path, Any], Any] | None = None,
        vmm: Any = None,
        health_check: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.1,
        boot_timeout: float = 180.0,
        health_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        gpus: GpuHost | None = None,
    ):
        # The real pieces are the defaults; tests inject fakes of the far side only.
        if kit_provider is None:
            from nodes.agent.guest.kit import ensure_kit as kit_provider
        if accel_provider is None:
            from nodes.agent.vmm.accel import probe_accel as accel_provider
        if vmm is None:
            from nodes.agent.vmm.qemu import QemuVm

            vmm = QemuVm(netns=netns)
        if health_check is None:
            from nodes.agent.health import wait_healthy as health_check
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
        self._clock = clock
        self.poll_interval = poll_interval
        self.boot_timeout = boot_timeout
        self.health_timeout = health_timeout
        self.stop_timeout = stop_timeout
        self.gpus = gpus  # None: a node without GPUs, which refuses any spec that asks for some
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
        # start path and the watcher from landing their writes out of order.
        async with self._set_lock:
            if persist:
                await asyncio.to_thread(self.store.write_info, info)
            old = self._infos.get(info.name)
            self._infos[info.name] = info
            if old is None or (old.state, old.reason, old.exit_code) != (info.state, info.reason, info.exit_code):
                self._emit(RuntimeEvent(info.name, info.state, self._clock(), info.reason, info.exit_code))
            self._changed.setdefault(info.name, asyncio.Event()).set()
        return info

    # -- start -------------------------------------------------------------------------------
    async def start(self, spec: ReplicaSpec) -> VmInfo:
        """Returns once the workload runs (and answers its health check if it has a traffic
        port); raises AgentError with the reason otherwise, leaving the VM `failed`."""
        validate_name(spec.name)
        async with self._locks.hold(spec.name):
            existing = await self._current(spec.name)
            if existing is not None and existing.state not in TERMINAL_STATES:
                stored = await asyncio.to_thread(self.store.read_spec, spec.name)
                if stored == spec.redacted():
                    return existing  # asked twice: already there
                raise AgentError(
                    f"VM {spec.name} already exists ({existing.state}); stop and remove it first", permanent=True
                )
            if existing is not None:
                await self._release(spec.name)
                await asyncio.to_thread(self.store.delete, spec.name)
            self._status.pop(spec.name, None)
            paths = await asyncio.to_thread(self.store.create, spec.name)
            await asyncio.to_thread(self.store.write_spec, spec)
            info = VmInfo(name=spec.name, state="pulling", image=spec.image, started_at=self._clock())
            await self._set(info)
            try:
                return await self._boot(spec, paths, info)
            except BaseException as exc:
                reason = exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
                if isinstance(exc, asyncio.CancelledError):
                    reason = "start cancelled"
                await self._fail_start(spec.name, reason)
                if isinstance(exc, (AgentError, asyncio.CancelledError)):
                    raise
                raise AgentError(f"start of {spec.name} failed: {reason}") from exc

    async def _boot(self, spec: ReplicaSpec, paths: VmPaths, info: VmInfo) -> VmInfo:
        from nodes.agent.vmm.qemu import GuestSpec, VmLaunch

        kit, accel = await self.host()
        info = await self._set(replace(info, accel=accel.name))

        def progress(p: Any) -> None:
            self._emit(RuntimeEvent(spec.name, "pulling", self._clock(), phase=p.phase,
                                    done_bytes=p.done_bytes, total_bytes=p.total_bytes))

        credentials = None
        if spec.registry_username is not None:
            credentials = (spec.registry_username, spec.registry_password or "")
        disk = await self.images.ensure_disk(spec.image, credentials=credentials, tenant=spec.tenant_id,
                                             progress=progress)
        argv, env = guest_command(disk.config, spec)
        info = await self._set(replace(info, state="booting", digest=disk.digest))
        await self.images.create_overlay(disk, paths.overlay)
        await self._ensure_network()
        net = await self.network.ensure_tap(spec.name)
        host_port = None
        if spec.traffic_port:
            host_port = await self.network.publish_port(spec.name, spec.traffic_port)
        info = await self._set(replace(info, address=str(net.address), host_port=host_port))
        guest = GuestSpec(argv=argv, env=env, workdir=disk.config.workdir or "/", user=disk.config.user or "")
        gpus = await self._gpus_prepare(spec) if spec.gpu_bdfs else Prepared(None, spec.vcpus, spec.memory_mib)
        launch = VmLaunch(
            name=spec.name, vm_dir=paths.dir, kit=kit, accel=accel, disk=paths.overlay,
            vcpus=gpus.vcpus, memory_mib=gpus.memory_mib, guest=guest, net=net, machine=gpus.machine,
        )
        pid = await self.vmm.launch(launch)
        info = await self._set(replace(info, pid=pid))
        self._watch(spec.name)
        info = await self._wait_for(spec.name, lambda i: i.state not in ("booting",), self.boot_timeout,
                                    f"workload did not start within {self.boot_timeout:.0f}s")
        if guest_ended(info):  # over before it ran: the watcher stops the VM, and then it has ended
            info = await self._wait_for(spec.name, lambda i: i.state in TERMINAL_STATES, self.boot_timeout,
                                        f"VM did not stop within {self.boot_timeout:.0f}s of its workload's end")
        if info.state == "failed":
            raise AgentError(info.reason or "VM failed", permanent=True)
        if info.state == "stopped":
            return info  # the workload already ran to completion with code 0
        if spec.traffic_port:
            await self._health(spec.name, str(net.address), spec.traffic_port)
        current = self._infos[spec.name]
        if current.state in ("starting", "restarting"):
            current = await self._set(replace(current, state="running", reason=gpus.notice))
        return current

    async def _gpus_prepare(self, spec: ReplicaSpec) -> Prepared:
        if self.gpus is None:
            raise AgentError(f"this node has no GPUs to give, and the replica asks for {len(spec.gpu_bdfs)} "
                             f"({', '.join(spec.gpu_bdfs)}): a VM never boots without the GPUs it was given",
                             permanent=True)
        # GPUs still bound for a VM that is gone (one that ended by itself) go back first.
        live = {n for n, i in self._infos.items() if i.state not in TERMINAL_STATES}
        await asyncio.to_thread(self.gpus.recover, live)
        return await asyncio.to_thread(self.gpus.prepare, spec.name, list(spec.gpu_bdfs), vcpus=spec.vcpus,
                                       memory_mib=spec.memory_mib)

    async def _gpus_release(self, name: str) -> None:
        """Reset and give back what the VM had: only once its QEMU is gone."""
        if self.gpus is not None:
            await asyncio.to_thread(self.gpus.detach, name)

    async def _health(self, name: str, host: str, port: int) -> None:
        """The health check races the VM's own end: a workload that dies fails fast with its
        crash reason instead of a connection timeout. A check still failing after
        HEALTH_QUIET_S is announced (a `health` event) each time its reason changes: the
        customer sees why the replica is not running yet, not a silent `starting`."""
        began = time.monotonic()
        told: list[str] = []

        async def failing(reason: str) -> None:
            if time.monotonic() - began >= HEALTH_QUIET_S and (not told or told[-1] != reason):
                told.append(reason)
                self._emit(RuntimeEvent(name, "starting", self._clock(), f"health check failing: {reason}",
                                        phase="health"))

        check = asyncio.ensure_future(self._health_check(host, port, timeout=self.health_timeout, netns=self.netns,
                                                         on_failure=failing))
        ended = asyncio.ensure_future(self._wait_for(name, lambda i: i.state in TERMINAL_STATES, None, ""))
        try:
            done, _ = await asyncio.wait({check, ended}, return_when=asyncio.FIRST_COMPLETED)
            if check in done:
                check.result()
            else:
                info = ended.result()
                raise AgentError(info.reason or f"VM {info.state}", permanent=True)
        finally:
            for task in (check, ended):
                task.cancel()
            await asyncio.gather(check, ended, return_exceptions=True)

    async def _fail_start(self, name: str, reason: str) -> None:
        """A failed start keeps its dir (state, logs) but no process, TAP, rule or overlay."""
        info = self._infos.get(name) or VmInfo(name=name, state="failed")
        await self._unwatch(name)
        paths = self.store.paths(name)
        with contextlib.suppress(Exception):
            await self.vmm.stop(paths.dir, timeout=0)
        await self._release(name)
        await asyncio.to_thread(convert, paths, final=True, clock=self._clock)
        await self._set(replace(info, state="failed", reason=reason, pid=None))

    async def _release(self, name: str) -> None:
        paths = self.store.paths(name)
        await self.network.remove(name)
        await asyncio.to_thread(paths.overlay.unlink, missing_ok=True)
        await self._gpus_release(name)

    # -- recovery ----------------------------------------------------------------------------
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
                if info is None or (not launched and info.state not in TERMINAL_STATES):
                    # Half-created: the start that made it died before QEMU ran; its caller retries.
                    await self._release(name)
                    await asyncio.to_thread(self.store.delete, name)
                    continue
                known.add(name)
                self._infos[name] = info
                info = await self._refresh(name, paths, info)
                if info.state not in TERMINAL_STATES:
                    self._watch(name)
        if self.gpus is not None:
            # A VM another process holds the lock of (a `vm run` under way) counts as live.
            live = {n for n in known if n not in self._infos or self._infos[n].state not in TERMINAL_STATES}
            await asyncio.to_thread(self.gpus.recover, live)
        for orphan in await self.network.owned() - known:
            await self.network.remove(orphan)
        return [self._infos[n] for n in sorted(known) if n in self._infos]

    async def reassert_networks(self) -> None:
        """Every live VM's network checked as a new VM's is: rules someone flushed, or the new
        rules of an upgraded agent, are in place again without restarting a VM (the leases keep
        its address and host port). The daemon calls it after recover(); the one-shot CLI does
        not, since its options need not be the daemon's: a `vm ls` without the daemon's
        --subnet would move a running VM to the default one."""
        for name in sorted(self._infos):
            async with self._locks.hold(name):
                info = self._infos.get(name)
                if info is None or info.state in TERMINAL_STATES:
                    continue
                spec = await asyncio.to_thread(self.store.read_spec, name) or {}
                await self._ensure_network()
                await self.network.ensure_tap(name)
                if spec.get("traffic_port"):
                    await self.network.publish_port(name, spec["traffic_port"])

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
        if info.state not in TERMINAL_STATES:
            info = await self._set(replace(info, state="stopping", stop_requested=True))
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
        for name in list(self._watchers):
            await self._unwatch(name)
