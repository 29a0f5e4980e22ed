"""A fleet of simulated agents for the drain and rolling-restart tests: each node does what its
agent does with its desired set (services/agents.py: AgentSink.desired), one report at a time
through the same sink the agent consumer calls, while the test checks the route table after
every single report. Time moves only when the fleet has nothing else to do: then every drain
due within `stop_grace_seconds` ends, as the countdown task would end it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.routes import route_table
from cloud.deployments.services import schedule_pending
from cloud.deployments.services.agents import AgentSink
from cloud.deployments.services.drain import drains_end
from nodes.models import Node
from protocol.vocabulary import TERMINAL_STATES
from tests.deployments.factories import report

sink = AgentSink()
# What an agent reports of a desired replica, one state after another, until it runs.
NEXT = {"pending": "pulling", "pulling": "booting", "booting": "starting", "starting": "running"}


def serving(deployment: Deployment) -> set[str]:
    """The replicas (uids) the gateway would send this deployment's requests to now."""
    route = next(r for r in route_table().routes if r.label == deployment.endpoint_label)
    return {backend.replica for backend in route.backends}


def desired_on(node: Node) -> set[str]:
    return {d.replica_id for d in sink.desired(node_id=node.pk)}


class Fleet:
    def __init__(self, nodes: list[Node], *, after_each: Callable[[], None] = lambda: None,
                 healthy: Callable[[Replica], bool] = lambda replica: True,
                 crashes: Callable[[Replica], bool] = lambda replica: False):
        self.nodes = nodes
        self.after_each = after_each  # called after every report, placement pass and drain end
        self.healthy = healthy  # whether a replica's health check passes once it runs
        self.crashes = crashes  # whether its workload fails for good where it would have run
        self.reports = 0

    def _report(self, replica: Replica, state: str, **fields) -> None:
        report(replica, state, **fields)
        self.reports += 1
        self.after_each()

    def step(self) -> bool:
        """Each node's agent says one thing of each of its replicas that has something new:
        one more state towards `running` for a desired one, `stopped` for one no longer desired.
        A draining replica (still desired, but stopping on the plane) has nothing new to say."""
        moved = False
        for node in self.nodes:
            for pk in Replica.objects.filter(node=node).exclude(state__in=TERMINAL_STATES).values_list("pk", flat=True):
                # Read afresh: the report before this one may have stopped it.
                replica = Replica.objects.get(pk=pk)
                if replica.state in TERMINAL_STATES:
                    continue
                if str(replica.uid) not in desired_on(node):
                    self._report(replica, "stopped", exit_code=0)
                    moved = True
                elif replica.state in NEXT and NEXT[replica.state] == "running" and self.crashes(replica):
                    self._report(replica, "failed", exit_code=1, reason="exited with code 1 after 3 restarts")
                    moved = True
                elif replica.state in NEXT:
                    state = NEXT[replica.state]
                    health = "" if state != "running" or self.healthy(replica) else "failing"
                    self._report(replica, state, address="192.0.2.2", host_port=30000 + replica.pk % 10000,
                                 health=health)
                    moved = True
        return moved

    def schedule(self) -> int:
        placed = schedule_pending()
        self.after_each()
        return placed

    def end_drains(self) -> int:
        """The clock moves past every drain running now (none lasts longer than its grace)."""
        ended = drains_end(now=timezone.now() + timedelta(seconds=3600))
        self.after_each()
        return ended

    def settle(self, *, rounds: int = 60) -> None:
        """Until nothing changes: placement passes and agent reports, drains ending when the
        fleet would otherwise wait."""
        for _ in range(rounds):
            placed = self.schedule()
            if self.step() or placed:
                continue
            if not self.end_drains():
                return
        raise AssertionError("the fleet never settled")
