"""Starting a VM: the boot pipeline from pull to a running workload, the health check that
races the VM's own end, and the cleanup of a start that failed.

A part of MicroVmRuntime, kept apart as runtime_watch.py and runtime_logs.py are. These parts
are mixins rather than objects the runtime holds because they share one VM table (the VM's
info, its change events, its lock) and lean on each other: a boot waits on states the watcher
derives, and a failed boot stops the watcher. As objects they would pass that table and each
other's methods around; as mixins each names what it needs of its host class. Only the GPUs,
which need nothing of the table, are a composed object (runtime_gpus.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any

from nodes.agent.errors import AgentError
from nodes.agent.events import RuntimeEvent
from nodes.agent.lifecycle import guest_command, guest_ended
from nodes.agent.logs import convert
from nodes.agent.state import VmInfo, VmPaths, validate_name
from nodes.agent.vmm.cmdline import VmLaunch
from nodes.agent.vmm.spec import GuestSpec
from protocol.wire import ReplicaSpec
from protocol.vocabulary import (
    BOOTING,
    FAILED,
    HEALTH_PATH_RE,
    MAX_EXPOSED_PORTS,
    PULLING,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    VM_ENDED_STATES,
)

# A workload's port usually refuses for a moment while it starts: failures within this long
# are the normal start, not news for the plane.
HEALTH_QUIET_S = 2.0


def published_ports(traffic_port: int | None, ports: list[int] | None) -> list[int]:
    """The guest ports a VM publishes: its traffic port first, then its extra ones."""
    return ([traffic_port] if traffic_port else []) + [p for p in ports or () if p != traffic_port]


def ports_problem(spec: ReplicaSpec) -> str | None:
    """Why a spec's extra ports cannot be published, or None. The plane sends at most
    MAX_EXPOSED_PORTS distinct ports, none of them the traffic port; a spec that does otherwise
    came from somewhere else, and is refused rather than half published."""
    if len(spec.ports) > MAX_EXPOSED_PORTS:
        return f"at most {MAX_EXPOSED_PORTS} ports besides the traffic port, not {len(spec.ports)}"
    for port in spec.ports:
        if not 0 < port < 65536:
            return f"port {port} is not 1-65535"
    if len(set(spec.ports)) != len(spec.ports) or spec.traffic_port in spec.ports:
        return "a port is named twice (or is the traffic port)"
    return None


class VmBoot:
    """Needs of its host class: `store`, `images`, `network`, `vmm`, `netns`, `boot_timeout`,
    the volumes' `_check_volumes()` and `_attach_volumes()` (runtime_volumes.VmVolumes),
    `health_timeout`, `_health_check`, `_clock`, `_locks`, `_gpus` (runtime_gpus.VmGpus),
    `_infos`, `_status`, `host()`, `_ensure_network()`, `_current()`, `_set()`, `_emit()`,
    `_release()`, and the watcher's `_watch()`, `_unwatch()` and `_wait_for()`."""

    async def start(self, spec: ReplicaSpec) -> VmInfo:
        """Returns once the workload runs (and answers its health check if it has a traffic
        port); raises AgentError with the reason otherwise, leaving the VM `failed`."""
        validate_name(spec.name)
        if spec.health_path is not None and not HEALTH_PATH_RE.fullmatch(spec.health_path):
            raise AgentError(f"health path refused: {spec.health_path[:80]!r} is not an absolute path of "
                             "visible ASCII (256 characters at most)", permanent=True)
        problem = ports_problem(spec)
        if problem is not None:
            raise AgentError(f"ports refused: {problem}", permanent=True)
        self._check_volumes(spec)
        async with self._locks.hold(spec.name):
            existing = await self._current(spec.name)
            if existing is not None and existing.state not in VM_ENDED_STATES:
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
            info = VmInfo(name=spec.name, state=PULLING, image=spec.image, started_at=self._clock())
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
        kit, accel = await self.host()
        info = await self._set(replace(info, accel=accel.name))
        # Before the pull: a volume this node cannot give (another size, no room) fails the
        # start at once, not after gigabytes of image.
        volumes = await self._attach_volumes(spec)

        def progress(p: Any) -> None:
            self._emit(RuntimeEvent(spec.name, PULLING, self._clock(), phase=p.phase,
                                    done_bytes=p.done_bytes, total_bytes=p.total_bytes))

        credentials = None
        if spec.registry_username is not None:
            credentials = (spec.registry_username, spec.registry_password or "")
        disk = await self.images.ensure_disk(spec.image, credentials=credentials, tenant=spec.tenant_id,
                                             progress=progress)
        argv, env = guest_command(disk.config, spec)
        info = await self._set(replace(info, state=BOOTING, digest=disk.digest))
        await self.images.create_overlay(disk, paths.overlay)
        await self._ensure_network()
        net = await self.network.ensure_tap(spec.name)
        host_ports = await self._publish(spec.name, spec.traffic_port, spec.ports)
        info = await self._set(replace(info, address=str(net.address), host_ports=host_ports,
                                       host_port=host_ports.get(str(spec.traffic_port))))
        guest = GuestSpec(argv=argv, env=env, workdir=disk.config.workdir or "/", user=disk.config.user or "")
        live = {n for n, i in self._infos.items() if i.state not in VM_ENDED_STATES}
        gpus = await self._gpus.prepare(spec, live)
        launch = VmLaunch(
            name=spec.name, vm_dir=paths.dir, kit=kit, accel=accel, disk=paths.overlay,
            vcpus=gpus.vcpus, memory_mib=gpus.memory_mib, guest=guest, net=net, machine=gpus.machine,
            volumes=volumes,
        )
        pid = await self.vmm.launch(launch)
        info = await self._set(replace(info, pid=pid))
        self._watch(spec.name)
        info = await self._wait_for(spec.name, lambda i: i.state != BOOTING, self.boot_timeout,
                                    f"workload did not start within {self.boot_timeout:.0f}s")
        if guest_ended(info):  # over before it ran: the watcher stops the VM, and then it has ended
            info = await self._wait_for(spec.name, lambda i: i.state in VM_ENDED_STATES, self.boot_timeout,
                                        f"VM did not stop within {self.boot_timeout:.0f}s of its workload's end")
        if info.state == FAILED:
            raise AgentError(info.reason or "VM failed", permanent=True)
        if info.state == STOPPED:
            return info  # the workload already ran to completion with code 0
        if spec.traffic_port:
            await self._health(spec.name, str(net.address), spec.traffic_port, spec.health_path)
        current = self._infos[spec.name]
        if current.state in (STARTING, RESTARTING):
            current = await self._set(replace(current, state=RUNNING, reason=gpus.notice))
        return current

    async def _publish(self, name: str, traffic_port: int | None, ports: list[int] | None) -> dict[str, int]:
        """Each port published (DNAT, and the gateway-only guard when the node has one): where
        each guest port is on the node. Calling it again re-checks the rules and keeps the
        host ports (the leases hold them)."""
        return {str(port): await self.network.publish_port(name, port) for port in published_ports(traffic_port, ports)}

    async def _health(self, name: str, host: str, port: int, path: str | None) -> None:
        """The health check races the VM's own end: a workload that dies fails fast with its
        crash reason instead of a connection timeout. A check still failing after
        HEALTH_QUIET_S is announced (a `health` event) each time its reason changes: the
        customer sees why the replica is not running yet, not a silent `starting`."""
        began = time.monotonic()
        told: list[str] = []

        async def failing(reason: str) -> None:
            if time.monotonic() - began >= HEALTH_QUIET_S and (not told or told[-1] != reason):
                told.append(reason)
                self._emit(RuntimeEvent(name, STARTING, self._clock(), f"health check failing: {reason}",
                                        phase="health"))

        check = asyncio.ensure_future(self._health_check(host, port, timeout=self.health_timeout, netns=self.netns,
                                                         http_path=path, on_failure=failing))
        ended = asyncio.ensure_future(self._wait_for(name, lambda i: i.state in VM_ENDED_STATES, None, ""))
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
        info = self._infos.get(name) or VmInfo(name=name, state=FAILED)
        await self._unwatch(name)
        paths = self.store.paths(name)
        with contextlib.suppress(Exception):
            await self.vmm.stop(paths.dir, timeout=0)
        await self._release(name)
        await asyncio.to_thread(convert, paths, final=True, clock=self._clock)
        await self._set(replace(info, state=FAILED, reason=reason, pid=None))
