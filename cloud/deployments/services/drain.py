"""Drain (issue 25): a replica the gateway routes to leaves its pool before its VM stops.

Every stop goes through `status.replicas_stop` (stop, delete, restart, scale-down, re-placement,
out of funds, expiry). A replica that serves when it is told to stop (it is one of the route
table's backends: running, health not failing, with a host port for the deployment's traffic
port) gets `desired=stop` at once, which takes it out of the route table, but stays in its node's
desired set until `drain_until`, the deployment's `stop_grace_seconds` later. The gateway takes
the new table within a second and lets requests already on a removed backend run for that long,
so no request the workload was answering is cut by its VM stopping. Then the node is told (a
task counted down to `drain_until`, and the fleet sweep as a backstop) and stops the VM as it
stops any other. One that does not serve (pending, starting, failing its check, no traffic
port) has nothing to drain and stops at once.

The plane times the drain, not the agent: the plane is what takes the replica out of the
gateways' table, so only it knows when the drain began; and while it drains the node need not
know anything new (its desired set is unchanged), so an agent of any version drains correctly.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from cloud.deployments.models import Replica
from nodes import link
from protocol.vocabulary import FAILING, RUN, RUNNING

log = logging.getLogger(__name__)


def replica_up(replica: Replica) -> bool:
    """Wanted, running and not failing its health check: a rolling restart's successor is ready
    when it is up, and an old incarnation is taken down for room only while another is."""
    return replica.desired == RUN and replica.state == RUNNING and replica.health != FAILING


def up_q() -> Q:
    return Q(desired=RUN, state=RUNNING) & ~Q(health=FAILING)


def replica_serving(replica: Replica) -> bool:
    """Would be a backend in the gateway's route table (routes.py) now."""
    return (replica_up(replica) and replica.node_id is not None and replica.host_port is not None
            and replica.deployment.traffic_port is not None)


def drain_until(replica: Replica, *, now: datetime) -> datetime | None:
    """When a replica told to stop now may leave its node: None (at once) unless it serves."""
    grace = replica.deployment.stop_grace_seconds
    if grace <= 0 or not replica_serving(replica):
        return None
    return now + timedelta(seconds=grace)


def desired_set_q(*, now: datetime) -> Q:
    """What a node keeps running: the wanted replicas, and those still draining."""
    return Q(desired=RUN) | Q(drain_until__gt=now)


def drain_end_at(when: datetime) -> None:
    """Ask a worker, once this transaction commits, to end the drains due at `when`. A broker
    that is away costs only precision: the fleet sweep ends them a few seconds later."""
    countdown = max((when - timezone.now()).total_seconds(), 0.0)

    def send() -> None:
        from cloud.celery import app

        try:
            app.send_task("deployments.end_drains", countdown=countdown, ignore_result=True)
        except Exception:  # noqa: BLE001
            log.warning("could not queue the end of a drain; the fleet sweep will end it", exc_info=True)

    transaction.on_commit(send)


def drains_end(*, now: datetime | None = None) -> int:
    """Ends the drains due by `now`: each replica leaves its node's desired set, and its node is
    told to stop it. Claimed with SKIP LOCKED and cleared, so two workers never both end one
    and a drain is ended once. Returns how many ended."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(Replica.objects.select_for_update(skip_locked=True, of=("self",))
                   .filter(drain_until__lte=now).values_list("pk", "node_id"))
        if not due:
            return 0
        Replica.objects.filter(pk__in=[pk for pk, _ in due]).update(drain_until=None)
        for node_id in sorted({node_id for _, node_id in due if node_id is not None}):
            link.notify_node(node_id)
    return len(due)
