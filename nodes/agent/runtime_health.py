"""Health checks of running VMs: a VM with a traffic port is checked for as long as it runs, so
the plane (and through it the gateway) knows which replicas may take a request.

A part of MicroVmRuntime, a mixin for the reason given in runtime_boot.py. The start's own
check (runtime_boot.py: `_health`) decides when a VM becomes `running`; from then on one checker
task per VM probes it every `health_interval` seconds (`health.check_once`, the same probe with
a timeout of at most one interval, so there is never more than one check of a VM in flight and
a guest that holds a probe open delays nothing but its own next check). `health_failures`
failures in a row make the VM "failing", with the last failure's reason; the first pass after
that makes it passing again. The verdict goes through `_set_health`, which stores and announces
it only when it changes: a VM that keeps failing for the same reason costs the plane nothing
beyond its first report.

The checker lives with the watcher (`_watch` starts both, `_unwatch` stops both) and ends by
itself once the VM is stopping or has ended; between a crash and the workload's restart (the
guest's own restarts, `restarting`) it only waits.
"""

from __future__ import annotations

import asyncio
import logging

from protocol.vocabulary import FAILING, PASSING, RUNNING, STOPPING, VM_ENDED_STATES

log = logging.getLogger(__name__)

DEFAULT_HEALTH_INTERVAL_S = 5.0
DEFAULT_HEALTH_FAILURES = 3
# A probe's longest wait: short, so that a silent guest is seen as such within seconds, and
# never longer than the interval, so checks of one VM cannot overlap or queue up.
HEALTH_PROBE_TIMEOUT_S = 3.0


class VmHealth:
    """Needs of its host class: `store`, `netns`, `health_interval`, `health_failures`,
    `_health_probe` (health.check_once), `_infos`, `_checkers` and `_set_health()`."""

    def _check_health(self, name: str) -> None:
        if name not in self._checkers or self._checkers[name].done():
            self._checkers[name] = asyncio.create_task(self._health_loop(name), name=f"health-{name}")

    async def _uncheck_health(self, name: str) -> None:
        task = self._checkers.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _health_loop(self, name: str) -> None:
        spec = await asyncio.to_thread(self.store.read_spec, name) or {}
        port, path = spec.get("traffic_port"), spec.get("health_path")
        if not port:
            return  # nothing to check: a batch job, or a worker that serves nothing
        loop = asyncio.get_running_loop()
        timeout = min(HEALTH_PROBE_TIMEOUT_S, self.health_interval)
        failures = 0
        due = loop.time() + self.health_interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self.health_interval
            info = self._infos.get(name)
            if info is None or info.state == STOPPING or info.state in VM_ENDED_STATES:
                return
            if info.state != RUNNING or not info.address:
                failures = 0  # starting or restarting: the start's check, or a crash, speaks for it
                continue
            try:
                reason = await self._health_probe(info.address, port, timeout=timeout, netns=self.netns,
                                                  http_path=path)
            except Exception:  # a bug of ours says nothing about the guest: no verdict this round
                log.exception("%s: health probe raised", name)
                continue
            if reason is None:
                failures = 0
                await self._set_health(name, PASSING, "")
                continue
            failures += 1
            if failures >= self.health_failures:
                if failures == self.health_failures:
                    log.info("%s: health check failing (%d in a row): %s", name, failures, reason)
                await self._set_health(name, FAILING, f"health check failing: {reason}")
