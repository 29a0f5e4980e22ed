"""Rolling restarts (issue 25): a restart, or a change of env, that never leaves a deployment
with fewer replicas serving than it had, where there is room for that.

Each incarnation that is up when the restart begins gets a successor, placed and started while
it keeps serving (`replaced_by`: it is no longer its ordinal's live replica, but still wanted);
once the successor is up (running, health check not failing), the old one drains and stops
(services/agents.py). One that is not up has nothing to lose and is stopped and replaced at
once, as before issue 25. Incarnations not yet placed are left alone: placed later, they run
the new spec anyway.

Where the scheduler finds no room for a successor, the restart goes ordinal by ordinal: the
old incarnation drains and stops, and its successor takes the units it frees. An old one is
taken down that way only while every other ordinal has a replica up, so with two or more
replicas all but one serve at every step, and a new spec that does not start costs one
ordinal, not all of them. A restart is over when every live replica was placed since it began
and is up (services/status.py: roll_progress).

A successor that fails gives its ordinal back to the old incarnation, if that still serves; one
lost with its node is placed again, and the old one waits for that one instead. A second
restart begins from where the first got to: successors already up become the old incarnations,
successors not yet up are stopped (they do not serve) and their predecessors get new ones. A
stop stops everything, old and new, draining what serves.
"""

from __future__ import annotations

from django.db.models import Max
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services.drain import replica_up, up_q
from cloud.deployments.services.kick import scheduler_kick
from cloud.deployments.services.status import (
    incarnations_create,
    live_q,
    missing_ordinals,
    replicas_stop,
    roll_progress,
)
from nodes import selectors as node_selectors
from protocol.vocabulary import ONLINE, RUN, STOP, TERMINAL_STATES


def successor_create(replica: Replica, *, reason: str, old_reason: str) -> Replica:
    """A new pending incarnation of `replica`'s ordinal; `replica` serves until it is up."""
    generation = (Replica.objects.filter(deployment_id=replica.deployment_id, ordinal=replica.ordinal)
                  .aggregate(g=Max("generation"))["g"] or 0) + 1
    # Made unwanted first, so the live-per-ordinal constraint admits it beside the old row;
    # wanted again once the old row points at it (all in one transaction, so no worker sees
    # the in-between).
    new = Replica.objects.create(deployment_id=replica.deployment_id, ordinal=replica.ordinal, generation=generation,
                                 desired=STOP, state=Replica.State.PENDING, reason=reason)
    replica.replaced_by = new
    replica.reason = old_reason.format(generation=generation)
    replica.save(update_fields=["replaced_by", "reason"])
    Replica.objects.filter(pk=new.pk).update(desired=RUN)
    new.desired = RUN
    return new


def _predecessor(replica: Replica) -> Replica | None:
    """The older incarnation still serving until `replica` is up, if there is one."""
    return (Replica.objects.select_for_update(of=("self",)).select_related("deployment")
            .filter(replaced_by=replica, desired=RUN).exclude(state__in=TERMINAL_STATES).first())


def deployment_roll(*, deployment: Deployment) -> None:
    """Begins a rolling restart of every placed live incarnation: the deployment is `starting`
    until it is over. The caller holds the deployment's row lock, and saves it."""
    now = timezone.now()
    # An ordinal with nothing live (its replica failed or exited) starts again too, first: it
    # adds a replica that serves where the others only replace one.
    incarnations_create(deployment=deployment, ordinals=missing_ordinals(deployment))
    current = list(Replica.objects.select_for_update(of=("self",)).select_related("deployment")
                   .filter(live_q(), deployment=deployment, node__isnull=False).order_by("ordinal"))
    for replica in current:
        if replica_up(replica):
            successor_create(replica, reason=f"rolling restart: replacing generation {replica.generation}",
                             old_reason="rolling restart: serving until generation {generation} is up")
            continue
        # Not serving: nothing to lose by stopping it now. Were it a successor still starting,
        # the incarnation it was to replace keeps serving until the new one is up.
        predecessor = _predecessor(replica)
        replicas_stop(Replica.objects.filter(pk=replica.pk), reason="restart requested: replaced by a new incarnation")
        if predecessor is not None:
            successor_create(predecessor, reason=f"rolling restart: replacing generation {predecessor.generation}",
                             old_reason="rolling restart: serving until generation {generation} is up")
        else:
            incarnations_create(deployment=deployment, ordinals=[replica.ordinal])
    deployment.rolling_restart_at = now
    deployment.status = Deployment.Status.STARTING
    deployment.status_reason = roll_progress(deployment)[1] or "restart requested: new incarnations starting"
    scheduler_kick()


def _others_up(deployment: Deployment, ordinal: int) -> bool:
    """Every other ordinal of the deployment has a replica up (its live one, or an old one still
    serving): an ordinal down for any reason (taken down for room, its new incarnation failed
    or not up yet, a health check failing) holds the next one back. With one replica, trivially."""
    up = (Replica.objects.filter(up_q(), deployment=deployment, ordinal__lt=deployment.replica_count)
          .exclude(ordinal=ordinal).values_list("ordinal", flat=True).distinct())
    return len(set(up)) == deployment.replica_count - 1


def room_make(*, successor: Replica) -> bool:
    """The scheduler found no room for `successor` (the caller holds its deployment's lock): its
    predecessor drains and stops, so that the successor can take its units, when that keeps the
    deployment serving. True when it did."""
    deployment = successor.deployment
    if deployment.rolling_restart_at is None:
        return False  # a node drain's successor: the draining node's units would not help it
    old = _predecessor(successor)
    if old is None or old.node_id is None:
        return False
    # The units it frees help only on a node that takes new replicas (not a draining one).
    if node_selectors.node_get(old.node_id).status != ONLINE:
        return False
    # Its own incarnations on their way out free units soon (a second restart's, or the first
    # one's drains): those make room without taking another one down.
    if Replica.objects.filter(deployment=deployment, desired=STOP, node__isnull=False).exclude(
            state__in=TERMINAL_STATES).exists():
        return False
    if replica_up(old) and not _others_up(deployment, old.ordinal):
        return False  # ordinal by ordinal: this one waits until every other one serves
    replicas_stop(Replica.objects.filter(pk=old.pk),
                  reason=f"rolling restart without spare capacity: stopping to make room for generation "
                         f"{successor.generation}")
    return True


def volume_hand_over(*, successor: Replica, volume_name: str) -> bool:
    """`successor` waits for a read-write volume its predecessor's VM still holds (an ordinal
    with one cannot surge): the predecessor drains and stops, ordinal by ordinal as room_make
    does, so with per-replica volumes every other ordinal serves meanwhile. True when it did.
    Caller holds the deployment's lock."""
    deployment = successor.deployment
    old = _predecessor(successor)
    if old is None or old.desired != RUN:
        return False  # nothing left to stop: the holder is on its way out already
    others_leaving = (Replica.objects.filter(deployment=deployment, desired=STOP, node__isnull=False, vm_gone=False)
                      .exclude(ordinal=old.ordinal).exists())
    if others_leaving or (replica_up(old) and not _others_up(deployment, old.ordinal)):
        return False  # the next ordinal waits until every other one serves again
    replicas_stop(Replica.objects.filter(pk=old.pk),
                  reason=f"handing read-write volume {volume_name} to generation {successor.generation}")
    return True


def successor_up(replica: Replica) -> None:
    """`replica` is up (a node's report): if it is a successor (a rolling restart's or a node
    drain's), the incarnation it replaces leaves the gateway's pool (drains) and stops. Its
    health counts, not only its state: a successor running but failing its check takes no
    request. Caller holds the deployment's lock."""
    old = Replica.objects.filter(replaced_by=replica, desired=RUN).exclude(state__in=TERMINAL_STATES)
    replicas_stop(old, reason=f"replaced by generation {replica.generation}, which is up")
    if replica.deployment.rolling_restart_at is not None:
        scheduler_kick()  # without spare capacity, the next ordinal waited for this one (room_make)


def successor_ended(replica: Replica) -> None:
    """`replica` ended on its node while wanted (it failed, or its workload exited). If it was a
    successor, the incarnation it was to replace, still serving, is its ordinal's live replica
    again: a new spec that does not run costs nothing that ran. Caller holds the deployment's lock."""
    old = _predecessor(replica)
    if old is not None:
        old.replaced_by = None
        old.reason = f"kept: its successor (generation {replica.generation}) {replica.state}"
        old.save(update_fields=["replaced_by", "reason"])
