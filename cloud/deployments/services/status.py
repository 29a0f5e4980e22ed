"""Incarnations and the deployment status derived from them.

A deployment's live set is its replicas that are wanted (`desired=run`), not finished and not
replaced by a drain. Every write here happens under the deployment's row lock, taken by the
caller or by `_locked()`; lock order is always deployment, then replica, then GPU/slot rows.
"""

from __future__ import annotations

from django.db.models import Max, Q
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services import drain
from cloud.deployments.services.events import event_record
from cloud.deployments.services.gateways import routes_changed
from cloud.deployments.services.kick import scheduler_kick
from nodes import link
from protocol.vocabulary import LIVE_STATUSES, TERMINAL_STATES, VM_ENDED_STATES

S = Deployment.Status
R = Replica.State
PENDING_REASON = "waiting for the scheduler: no node placement yet"
# Appended to a stop's reason while its replicas' nodes stop them; dropped once they have.
STOP_WAITING = "waiting for the node(s) to stop the replicas"


def live_q() -> Q:
    return Q(desired=Replica.Desired.RUN, replaced_by__isnull=True) & ~Q(state__in=TERMINAL_STATES)


def unfinished_q() -> Q:
    return ~Q(state__in=TERMINAL_STATES)


def replica_event(replica: Replica, type: str, **payload) -> None:  # noqa: A002
    deployment = replica.deployment
    event_record(tenant_id=deployment.tenant_id, deployment=deployment, type=type, payload={
        "replica_id": str(replica.uid), "ordinal": replica.ordinal, "generation": replica.generation,
        "state": replica.state, "reason": replica.reason, **payload,
    })


def incarnations_create(*, deployment: Deployment, ordinals) -> list[Replica]:
    """A new pending incarnation (generation + 1 of whatever came before) for each ordinal."""
    ordinals = list(ordinals)
    if not ordinals:
        return []
    last = dict(
        Replica.objects.filter(deployment=deployment, ordinal__in=ordinals)
        .values("ordinal").annotate(g=Max("generation")).values_list("ordinal", "g")
    )
    made = Replica.objects.bulk_create([
        Replica(deployment=deployment, ordinal=o, generation=last.get(o, 0) + 1, state=R.PENDING, reason=PENDING_REASON)
        for o in ordinals
    ])
    scheduler_kick()
    return made


def missing_ordinals(deployment: Deployment) -> list[int]:
    live = set(Replica.objects.filter(live_q(), deployment=deployment).values_list("ordinal", flat=True))
    return [o for o in range(deployment.replica_count) if o not in live]


def replicas_stop(replicas, *, reason: str) -> int:
    """Asks these incarnations to stop. One never placed ends here and now; one on a node is
    `stopping` until its node reports the VM gone, and one that serves drains first (it leaves
    the gateway's pool now and its node stops it at `drain_until`: services/drain.py).
    Returns how many wait for a node."""
    now = timezone.now()
    waiting, asked = 0, False
    drains_end_at = None
    for replica in replicas.select_for_update(of=("self",)).select_related("deployment"):
        before = replica.state
        until = drain.drain_until(replica, now=now)  # asked before `desired` says stop
        replica.desired = Replica.Desired.STOP
        replica.reason = reason
        if replica.node_id is None:
            replica.state, replica.ended_at, replica.vm_gone = R.STOPPED, now, True
        elif replica.state not in TERMINAL_STATES:
            replica.state = R.STOPPING
            waiting += 1
            if until is None:
                link.notify_node(replica.node_id)
            else:
                replica.drain_until = until  # its node's desired set is unchanged until then
                drains_end_at = max(drains_end_at or until, until)
        replica.save(update_fields=["desired", "reason", "state", "ended_at", "vm_gone", "drain_until"])
        if until is not None and replica.state == R.STOPPING:
            replica_event(replica, "replica.draining", drain_until=until.isoformat())
        elif replica.state != before:
            replica_event(replica, f"replica.{replica.state}")
        asked = True
    if asked:
        # Not wanted any more, so out of the gateway's pool on the push this asks for.
        routes_changed()
    if drains_end_at is not None:
        drain.drain_end_at(drains_end_at)  # one task ends every drain begun here
    return waiting


def _summary(deployment: Deployment) -> tuple[str, str]:
    replicas = list(
        Replica.objects.filter(deployment=deployment)
        .filter(Q(desired=Replica.Desired.RUN) | unfinished_q())
        .order_by("ordinal", "-generation").only("ordinal", "generation", "state", "reason", "desired", "replaced_by_id", "node_id")
    )
    wanted = deployment.replica_count
    latest: dict[int, Replica] = {}
    for r in replicas:
        if r.desired == Replica.Desired.RUN and r.ordinal < wanted:
            # The newest incarnation speaks for its ordinal, except that an old one still
            # serving during a drain counts as running until its replacement does.
            if r.ordinal not in latest or (r.state == R.RUNNING and latest[r.ordinal].state != R.RUNNING):
                latest[r.ordinal] = r
    running = [r for r in latest.values() if r.state == R.RUNNING]
    live = [r for r in latest.values() if r.state not in TERMINAL_STATES]
    ended = [r for r in latest.values() if r.state in TERMINAL_STATES]
    not_running = sorted((r for r in latest.values() if r.state != R.RUNNING), key=lambda r: r.ordinal)
    why = f"replica {not_running[0].ordinal}: {not_running[0].state}" + (
        f" ({not_running[0].reason})" if not_running and not_running[0].reason else "") if not_running else ""
    if wanted and len(running) == wanted:
        return S.RUNNING, ""
    if running:
        return S.RUNNING, f"{len(running)} of {wanted} replicas running; {why}"
    if live and any(r.state != R.PENDING or r.node_id is not None for r in live):
        return S.STARTING, why
    if live or len(latest) < wanted:
        return S.PENDING, why or PENDING_REASON
    if ended and any(r.state == R.FAILED for r in ended):
        return S.FAILED, why
    return S.STOPPED, why or "every replica's workload exited"


def roll_progress(deployment: Deployment) -> tuple[bool, str]:
    """(over, reason) of the rolling restart begun at `rolling_restart_at`: over once every live
    replica was placed since it began (so it runs the new spec) and is up, except where the new
    incarnation failed (its ordinal keeps the old one, if that still serves). Until then, how
    many ordinals are replaced, and what holds the first one back (a failure first)."""
    since = deployment.rolling_restart_at
    rows = list(Replica.objects.filter(deployment=deployment, ordinal__lt=deployment.replica_count)
                .filter(live_q() | Q(created_at__gte=since, desired=Replica.Desired.RUN, state__in=VM_ENDED_STATES))
                .order_by("ordinal").only("ordinal", "state", "reason", "desired", "health", "placed_at"))
    failed = [r for r in rows if r.state in VM_ENDED_STATES]  # not `lost`: that one is placed again
    live = [r for r in rows if r.state not in TERMINAL_STATES]
    new = [r for r in live if r.placed_at is not None and r.placed_at >= since and drain.replica_up(r)]
    gave_up = {r.ordinal for r in failed}
    waiting = [r for r in live if r not in new and r.ordinal not in gave_up]
    if not waiting:
        return True, ""
    first = (failed or waiting)[0]
    why = f"replica {first.ordinal}: {first.state}" + (f" ({first.reason})" if first.reason else "")
    return False, f"rolling restart: {len(new)} of {deployment.replica_count} replaced; {why}"


def deployment_refresh(*, deployment_id) -> Deployment:
    """Re-derives the deployment's status from its replicas (locks the deployment row)."""
    deployment = Deployment.objects.select_for_update(of=("self",)).get(pk=deployment_id)
    now = timezone.now()
    before = (deployment.status, deployment.status_reason, deployment.rolling_restart_at)
    if deployment.status == S.STOPPING:
        if not Replica.objects.filter(unfinished_q(), deployment=deployment).exists():
            # The stop's own reason stays ("stopped by user", "insufficient_funds: ...").
            why = deployment.status_reason.removesuffix(f": {STOP_WAITING}")
            deployment.status, deployment.stopped_at = S.STOPPED, now
            deployment.status_reason = why if why != deployment.status_reason else "stopped"
    elif deployment.status in LIVE_STATUSES:
        status, reason = _summary(deployment)
        if deployment.rolling_restart_at is not None:
            over, rolling = roll_progress(deployment)
            if over or status in (S.FAILED, S.STOPPED):
                deployment.rolling_restart_at = None
            else:  # old incarnations may serve meanwhile, but the restart is not done
                status, reason = S.STARTING, rolling
        deployment.status, deployment.status_reason = status, reason[:500]
        if status == S.RUNNING and deployment.started_at is None:
            deployment.started_at = now
        if status in (S.FAILED, S.STOPPED):
            deployment.stopped_at = now
    if (deployment.status, deployment.status_reason, deployment.rolling_restart_at) != before:
        deployment.save(update_fields=["status", "status_reason", "started_at", "stopped_at", "rolling_restart_at",
                                       "updated_at"])
        if deployment.status != before[0]:
            event_record(tenant_id=deployment.tenant_id, deployment=deployment, type=f"deployment.{deployment.status}",
                         payload={"status": deployment.status, "reason": deployment.status_reason})
    return deployment
