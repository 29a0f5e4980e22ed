"""Start, stop, restart, delete and expiry: the deployment state machine.

    pending/starting/running --stop--> stopping (replicas on a node) --agent--> stopped
                             --stop--> stopped  (no replica was ever placed)
    stopped/failed (expired if extended) --start--> pending (new incarnations wait for the scheduler)
    starting/running --restart--> starting (each placed replica replaced by a new incarnation,
                                            rolling: services/rolling.py) --> running
    any live status past expires_at --expiry task--> expired

Nothing here pretends a node did something: a replica that is on a node goes to `stopping`
and the agent reports when it really stopped; a replica never placed stops at once.
Every transition holds the deployment row lock, writes an event and asks for a route push (a
stopped deployment's route says so, a started one's says it is starting).
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from cloud.deployments import selectors
from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services import quotas
from cloud.deployments.services.events import actor_label, event_record
from cloud.deployments.services.expose import gateway_ports_release
from cloud.deployments.services.gateways import routes_changed
from cloud.deployments.services.rolling import deployment_roll
from cloud.deployments.services.status import (
    PENDING_REASON,
    STOP_WAITING,
    incarnations_create,
    missing_ordinals,
    replicas_stop,
    unfinished_q,
)
from cloud.exceptions import Conflict
from protocol.vocabulary import LIVE_STATUSES
from volumes.services import deployment_volumes_release

S = Deployment.Status
STARTABLE = (S.STOPPED, S.FAILED, S.EXPIRED)
RESTARTABLE = (S.STARTING, S.RUNNING)


def _conflict(deployment: Deployment, action: str, allowed) -> Conflict:
    return Conflict(
        f"Cannot {action} a deployment that is {deployment.status}; {action} works from: {', '.join(allowed)}.",
        extra={"status_now": deployment.status},
    )


def _stop(*, deployment: Deployment, reason: str, final_status: str) -> None:
    now = timezone.now()
    waiting = replicas_stop(Replica.objects.filter(unfinished_q(), deployment=deployment), reason=reason)
    deployment.status = S.STOPPING if waiting and final_status == S.STOPPED else final_status
    deployment.status_reason = (
        f"{reason}: {STOP_WAITING}" if waiting else reason
    )
    if not waiting or final_status != S.STOPPED:
        deployment.stopped_at = now
    deployment.rolling_restart_at = None  # old and new incarnations alike were just stopped
    deployment.save(update_fields=["status", "status_reason", "stopped_at", "rolling_restart_at", "updated_at"])
    routes_changed()


@transaction.atomic
def deployment_stop(*, tenant, actor, deployment_id) -> Deployment:
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    if deployment.status not in LIVE_STATUSES:
        raise _conflict(deployment, "stop", LIVE_STATUSES)
    _stop(deployment=deployment, reason="stopped by user", final_status=S.STOPPED)
    event_record(tenant=tenant, deployment=deployment, type="deployment.stopping" if deployment.status == S.STOPPING else "deployment.stopped",
                 payload={"status": deployment.status, "actor": actor_label(actor)})
    return deployment


@transaction.atomic
def deployment_stop_unpaid(*, deployment_id, reason: str) -> Deployment | None:
    """Stops a live deployment whose tenant ran out of funds (the funds pass, once the grace
    period is over); None when it is no longer live. `reason` starts with insufficient_funds."""
    deployment = (Deployment.objects.select_for_update(of=("self",))
                  .filter(pk=deployment_id, deleted_at__isnull=True, status__in=LIVE_STATUSES).first())
    if deployment is None:
        return None
    _stop(deployment=deployment, reason=reason, final_status=S.STOPPED)
    event_record(tenant_id=deployment.tenant_id, deployment=deployment,
                 type="deployment.stopping" if deployment.status == S.STOPPING else "deployment.stopped",
                 payload={"status": deployment.status, "reason": reason, "actor": None})
    return deployment


@transaction.atomic
def deployment_start(*, tenant, actor, deployment_id) -> Deployment:
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    now = timezone.now()
    if deployment.status not in STARTABLE:
        raise _conflict(deployment, "start", STARTABLE)
    if deployment.expires_at is not None and deployment.expires_at <= now:
        raise Conflict(
            "The deployment's duration is used up (expired at "
            f"{deployment.expires_at:%Y-%m-%dT%H:%M:%SZ}); extend duration_hours with PATCH before starting it.",
            extra={"status_now": deployment.status},
        )

    locked = quotas.tenant_lock(tenant=tenant)
    hardware = deployment.hardware_type
    quotas.check_gpu_quota(tenant=locked, gpus_needed=deployment.gpus_total, exclude_id=deployment.pk,
                           cpu_only=hardware.cpu_only)
    quotas.check_funds(tenant=locked, hourly_cost=quotas.hourly_quote(deployment=deployment), exclude_id=deployment.pk)

    # New incarnations (generation + 1): the old rows stay as history with their logs and usage;
    # one still stopping on its node holds its units until the node confirms, so the new one is
    # placed wherever there is room.
    incarnations_create(deployment=deployment, ordinals=missing_ordinals(deployment))
    deployment.status, deployment.status_reason = S.PENDING, PENDING_REASON
    deployment.stopped_at = None
    deployment.save(update_fields=["status", "status_reason", "stopped_at", "updated_at"])
    routes_changed()
    event_record(tenant=tenant, deployment=deployment, type="deployment.started", payload={"actor": actor_label(actor)})
    return deployment


@transaction.atomic
def deployment_restart(*, tenant, actor, deployment_id) -> Deployment:
    """Every placed replica is replaced by a new incarnation, rolling (services/rolling.py): one
    that serves keeps serving until its successor is up. Restart is the `starting` deployment
    transition and the replicas' own states, never something read out of a reason text."""
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    if deployment.status not in RESTARTABLE:
        raise _conflict(deployment, "restart", RESTARTABLE)
    deployment_roll(deployment=deployment)
    deployment.save(update_fields=["status", "status_reason", "rolling_restart_at", "updated_at"])
    routes_changed()
    event_record(tenant=tenant, deployment=deployment, type="deployment.restarted", payload={"actor": actor_label(actor)})
    return deployment


@transaction.atomic
def deployment_delete(*, tenant, actor, deployment_id) -> None:
    """Stops what runs and hides the deployment (its name is free again). The row, replicas
    and usage are kept for billing; a replica still on a node is stopped by its agent."""
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    if deployment.status in LIVE_STATUSES or deployment.status == S.STOPPING:
        _stop(deployment=deployment, reason="deployment deleted", final_status=S.STOPPED)
    deployment.deleted_at = timezone.now()
    deployment.save(update_fields=["deleted_at", "updated_at"])
    gateway_ports_release(deployment=deployment)  # its TCP ports' gateway ports go to others
    deployment_volumes_release(deployment=deployment, actor=actor)  # detached; its own volumes erased unless kept
    routes_changed()  # its name leaves the table
    event_record(tenant=tenant, deployment=deployment, type="deployment.deleted",
                 payload={"name": deployment.name, "actor": actor_label(actor)})


def deployment_expire_due(*, now: datetime | None = None, batch: int = 500) -> int:
    """Expires live deployments past their expires_at; returns how many. Safe to run in
    several workers at once: rows are claimed with SKIP LOCKED and re-checked under the lock."""
    now = now or timezone.now()
    expired = 0
    while True:
        with transaction.atomic():
            due = list(
                Deployment.objects.select_for_update(skip_locked=True, of=("self",)).select_related("tenant")
                .filter(deleted_at__isnull=True, expires_at__lte=now, status__in=(*LIVE_STATUSES, S.STOPPING))
                .order_by("expires_at")[:batch]
            )
            for deployment in due:
                _stop(deployment=deployment, reason="duration used up", final_status=S.EXPIRED)
                event_record(tenant=deployment.tenant, deployment=deployment, type="deployment.expired",
                             payload={"expires_at": deployment.expires_at.isoformat()})
            expired += len(due)
        if len(due) < batch:
            return expired
