"""Converges the VMs on this node to the plane's desired set, and reports every state change.

Level-triggered: each pass lists what the runtime really has and compares it with the desired
set; a resent `desired` or `replica.start` therefore changes nothing. Every VM not in the set is
stopped (with its replica's grace) and removed: that is also the fence for a node that was
declared lost while partitioned. A desired replica whose VM has ended (stopped, failed) is
reported and left alone: restarting is the plane's decision, and it makes a new incarnation
with a new replica_id for it.

Nothing converges before the first `desired` arrives, so a daemon that starts while the plane
is unreachable leaves the VMs it adopted alone instead of fencing them all against an empty set.

One operation (a start, or a stop-and-remove) runs per replica at a time, each in its own task,
so one slow pull never holds up another replica; a removal first cancels that replica's start.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import AsyncIterator, Awaitable, Callable, Protocol

from nodes.agent.errors import AgentError
from nodes.agent.events import RuntimeEvent
from nodes.agent.state import VmInfo
from protocol.wire import Desired, DesiredReplica, Message, ReplicaReport, ReplicaSpec, ReplicaStatus
from protocol.vocabulary import BOOTING, FAILED, PULLING, STOPPED

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
MAX_GRACE_S = 300.0
# How long a removal waits for the replica's last log lines to be acknowledged before the VM
# dir (and its log) is deleted.
LOG_DRAIN_TIMEOUT_S = 10.0

_PHASES = {"resolve": "resolving", "pull": "pulling", "unpack": "unpacking", "disk": "building disk"}


class SupervisedRuntime(Protocol):
    """What the supervisor needs of nodes.agent.runtime.MicroVmRuntime."""

    async def start(self, spec: ReplicaSpec) -> VmInfo: ...
    async def stop(self, name: str, *, timeout: float | None = None) -> VmInfo: ...
    async def remove(self, name: str) -> None: ...
    async def list(self) -> list[VmInfo]: ...
    async def get(self, name: str) -> VmInfo | None: ...
    def events(self) -> AsyncIterator[RuntimeEvent]: ...


class LogDrain(Protocol):
    """What the supervisor needs of the log shipper when it removes a VM."""

    async def drain(self, replica_id: str, *, timeout: float) -> bool: ...
    def forget(self, replica_id: str) -> None: ...


def pull_reason(event: RuntimeEvent) -> str:
    """`pulling 312/870 MB` from a pulling event's progress; a bare pulling event says so."""
    verb = _PHASES.get(event.phase or "")
    if event.phase == "cached":
        return "image cached"
    if verb is None or not event.total_bytes:
        return f"{verb or 'pulling'} image"
    done = (event.done_bytes or 0) // 1_000_000
    return f"{verb} {done}/{max(1, math.ceil(event.total_bytes / 1_000_000))} MB"


def _grace(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_GRACE_S)


class Supervisor:
    def __init__(
        self,
        runtime: SupervisedRuntime,
        send: Callable[[Message], Awaitable[bool]],
        *,
        logs: LogDrain | None = None,
        log_seq: Callable[[str], int] = lambda _name: 0,
        drain_timeout_s: float = LOG_DRAIN_TIMEOUT_S,
    ):
        self.runtime = runtime
        self._send = send
        self._logs = logs
        self._log_seq = log_seq
        self.drain_timeout_s = drain_timeout_s
        self._desired: dict[str, DesiredReplica] | None = None  # None: no `desired` seen yet
        self._grace: dict[str, float] = {}
        self._states: dict[str, str] = {}
        self._ops: dict[str, tuple[str, asyncio.Task]] = {}
        # Replicas whose start we cancelled to stop them: the runtime marks such a VM failed
        # ("start cancelled"), but the plane asked for a stop and must hear `stopped`.
        self._quiet: set[str] = set()
        self._pull_reasons: dict[str, str] = {}
        # Started (or adopted) once by this daemon: never started again, so a replica whose
        # VM is gone (a start the runtime refused outright, an operator's `vm rm`) is reported
        # failed once instead of being restarted in a loop.
        self._attempted: set[str] = set()
        self._missing: set[str] = set()
        self._wake = asyncio.Event()
        self._converging = False

    # -- what the plane says ------------------------------------------------------------------
    def apply_desired(self, desired: Desired) -> None:
        self._desired = {}
        for replica in desired.replicas:
            self._want(replica)
        self._wake.set()

    def add(self, replica: DesiredReplica) -> None:
        """replica.start: one more in the desired set (already there: nothing changes)."""
        if self._desired is None:
            self._desired = {}
        self._want(replica)
        self._wake.set()

    def discard(self, replica_id: str, *, grace_s: float | None = None) -> None:
        """replica.stop: one less in the desired set; stopped with `grace_s` if given."""
        if self._desired is None:
            self._desired = {}
        self._desired.pop(replica_id, None)
        if grace_s is not None:
            self._grace[replica_id] = _grace(grace_s)
        self._wake.set()

    def _want(self, replica: DesiredReplica) -> None:
        self._desired[replica.replica_id] = replica
        self._grace[replica.replica_id] = _grace(replica.stop_grace_s)
        self._quiet.discard(replica.replica_id)

    # -- what the node has --------------------------------------------------------------------
    def state_of(self, name: str) -> str | None:
        """The last state seen for a VM (from events or a listing); None if none seen."""
        return self._states.get(name)

    def idle(self) -> bool:
        """Nothing left to act on: no pass pending or running, no start or removal in flight.
        Tests wait for it to prove that something did not happen, instead of sleeping."""
        return not self._wake.is_set() and not self._converging and not self._ops

    def starting(self) -> int:
        return sum(1 for kind, task in self._ops.values() if kind == "start" and not task.done())

    async def reports(self) -> list[ReplicaReport]:
        """Every VM the runtime has, as `hello` carries them."""
        infos = await self.runtime.list()
        for info in infos:
            self._states[info.name] = info.state
        return [self._report(info) for info in infos]

    def _report(self, info: VmInfo, **override) -> ReplicaReport:
        # A failing health check is what a running replica's reason says while it lasts: a full
        # report (hello) tells a reconnecting plane the health the last event told it.
        reason = info.health_reason if info.health else info.reason
        fields = dict(replica_id=info.name, state=info.state, reason=reason, address=info.address,
                      host_port=info.host_port, host_ports=dict(info.host_ports), exit_code=info.exit_code,
                      started_at=info.started_at,
                      log_seq=self._log_seq(info.name), health=info.health)
        fields.update(override)
        return ReplicaReport(**fields)

    # -- running ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Report events and converge, until cancelled (in-flight operations are cancelled too)."""
        reporter = asyncio.create_task(self._report_events(), name="supervisor-reporter")
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._converging = True
                try:
                    await self._converge()
                except Exception:
                    log.exception("converge pass failed; retrying")
                    await asyncio.sleep(1.0)
                    self._wake.set()
                finally:
                    self._converging = False
        finally:
            reporter.cancel()
            tasks = [task for _, task in self._ops.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(reporter, *tasks, return_exceptions=True)

    async def _converge(self) -> None:
        if self._desired is None:
            return
        present = {info.name: info for info in await self.runtime.list()}
        for name, info in present.items():
            self._states[name] = info.state
        self._attempted |= present.keys()
        for replica_id, replica in list(self._desired.items()):
            if replica_id in present or replica_id in self._ops:
                continue
            if replica_id not in self._attempted:
                self._attempted.add(replica_id)
                self._spawn(replica_id, "start", self._start(replica))
            elif replica_id not in self._missing:
                self._missing.add(replica_id)
                log.warning("%s: its VM is gone from this node; not starting it again", replica_id)
                await self._send(ReplicaStatus(ReplicaReport(replica_id=replica_id, state=FAILED,
                                                             reason="its VM was removed from the node")))
        keep = self._desired.keys() | present.keys() | self._ops.keys()
        self._attempted &= keep
        self._missing &= keep
        for name in sorted(present.keys() | self._ops.keys()):
            if name in self._desired or self._ops.get(name, ("",))[0] == "remove":
                continue
            self._spawn(name, "remove", self._remove(name, self._ops.get(name)))

    def _spawn(self, name: str, kind: str, coro: Awaitable[None]) -> None:
        task = asyncio.create_task(coro, name=f"{kind}-{name}")
        self._ops[name] = (kind, task)

        def done(t: asyncio.Task) -> None:
            if self._ops.get(name, (None, None))[1] is t:
                del self._ops[name]
            self._wake.set()  # the desired set may have changed while it ran

        task.add_done_callback(done)

    async def _start(self, replica: DesiredReplica) -> None:
        name = replica.replica_id
        log.info("starting %s (image %s)", name, replica.spec.image)
        try:
            info = await self.runtime.start(replica.spec)
            log.info("%s is %s", name, info.state)
            return
        except AgentError as exc:
            reason = exc.message
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug; the replica still fails with a reason, not silently
            log.exception("start of %s raised", name)
            reason = f"agent error: {type(exc).__name__}: {exc}"
        log.warning("start of %s failed: %s", name, reason)
        try:
            info = await self.runtime.get(name)
        except AgentError:
            info = None
        if info is None:
            # No VM to emit an event (e.g. a name the runtime refused): report it ourselves.
            self._missing.add(name)
            await self._send(ReplicaStatus(ReplicaReport(replica_id=name, state=FAILED, reason=reason)))

    async def _remove(self, name: str, previous: tuple[str, asyncio.Task] | None) -> None:
        cancelled_start = False
        if previous is not None and not previous[1].done():
            if previous[0] == "start":
                self._quiet.add(name)
                cancelled_start = True
                previous[1].cancel()
            await asyncio.gather(previous[1], return_exceptions=True)
        grace = self._grace.get(name, DEFAULT_GRACE_S)
        log.info("stopping %s: not desired on this node (grace %.0fs)", name, grace)
        info = VmInfo(name=name, state=STOPPED)
        try:
            if await self.runtime.get(name) is not None:  # a cancelled start may have left nothing
                info = await self.runtime.stop(name, timeout=grace)
                if self._logs is not None:
                    await self._logs.drain(name, timeout=self.drain_timeout_s)
                await self.runtime.remove(name)
                log.info("removed %s", name)
        except AgentError as exc:
            log.warning("removing %s: %s", name, exc.message)
        finally:
            if self._logs is not None:
                self._logs.forget(name)
            self._states.pop(name, None)
            self._pull_reasons.pop(name, None)
            self._grace.pop(name, None)
        if cancelled_start:
            await self._send(ReplicaStatus(self._report(info, state=STOPPED, reason="stopped before it ran",
                                                        exit_code=None)))

    # -- reporting ----------------------------------------------------------------------------
    async def _report_events(self) -> None:
        async for event in self.runtime.events():
            try:
                await self._report_event(event)
            except Exception:
                log.exception("reporting %s %s failed", event.name, event.state)

    async def _report_event(self, event: RuntimeEvent) -> None:
        self._states[event.name] = event.state
        if event.name in self._quiet:
            return
        reason = event.reason
        info = None
        if event.state == PULLING:
            reason = pull_reason(event)
            if self._pull_reasons.get(event.name) == reason:
                return  # progress finer than the reason shows: nothing new to tell
            self._pull_reasons[event.name] = reason
            log.debug("%s: %s", event.name, reason)
        else:
            log.info("%s: %s%s", event.name, event.state, f" ({reason})" if reason else "")
        if event.state not in (PULLING, BOOTING):
            # Address, host port and start time live in the VM's info, not in the event.
            try:
                info = await self.runtime.get(event.name)
            except AgentError:
                info = None
            if info is None:
                self._states.pop(event.name, None)  # removed meanwhile: nothing left to track
        if info is None:
            info = VmInfo(name=event.name, state=event.state)
        report = self._report(info, state=event.state, reason=reason, exit_code=event.exit_code,
                              health="failing" if event.phase == "health" else "")
        await self._send(ReplicaStatus(report))

