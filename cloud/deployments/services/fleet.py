"""What node events do to replicas: a node gone silent (its replicas `lost`, new incarnations
placed elsewhere), a drain (replacements first, the old ones stopped once those run or at the
deadline), and the periodic sweep that ties them together.

The node's own state changes are `nodes.services` (cordon, drain, uncordon: the admin and the
staff API call those, then kick the sweep); this module is the replica side, level-triggered
from the nodes' states, so it needs no call from the nodes app (which never imports this one).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services.logs import logs_note_lost
from cloud.deployments.services.gateways import routes_changed
from cloud.deployments.services.kick import scheduler_kick
from cloud.deployments.services.drain import drains_end
from cloud.deployments.services.placement import schedule_pending
from cloud.deployments.services.rolling import successor_create
from cloud.deployments.services.status import (
    deployment_refresh,
    incarnations_create,
    live_q,
    replica_event,
    replicas_stop,
    unfinished_q,
)
from nodes import selectors as node_selectors
from nodes import services as node_services
from protocol.vocabulary import LIVE_STATUSES, TERMINAL_STATES
from volumes import services as volume_services

R = Replica.State


def _deployments_on(node_id: int) -> list:
    return list(Replica.objects.filter(unfinished_q(), node_id=node_id).values_list("deployment_id", flat=True).distinct())


def node_lost(*, node_id: int) -> int:
    """The node is offline: each of its unfinished incarnations becomes `lost` (metered to the
    node's last heartbeat), and a wanted one gets a new incarnation to place elsewhere. Its
    GPUs stay held until the node, if it comes back, confirms the VMs are gone."""
    node = node_selectors.node_get(node_id)
    last_seen = node.last_heartbeat or timezone.now()
    lost = 0
    wrote: list[Replica] = []  # incarnations whose workload had started: it may have logged
    for deployment_id in _deployments_on(node_id):
        with transaction.atomic():
            deployment = Deployment.objects.select_for_update(of=("self",)).get(pk=deployment_id)
            for replica in (Replica.objects.select_for_update(of=("self",)).select_related("deployment")
                            .filter(unfinished_q(), deployment=deployment, node_id=node_id)):
                if replica.state not in (R.PENDING, R.PULLING):
                    wrote.append(replica)
                was_live = replica.desired == Replica.Desired.RUN and replica.replaced_by_id is None
                replica.state, replica.ended_at = R.LOST, timezone.now()
                replica.reason = f"node {node.hostname} stopped answering (last heartbeat {last_seen:%H:%M:%SZ})"
                if replica.booted_at is not None and replica.stopped_at is None:
                    replica.stopped_at = max(last_seen, replica.booted_at)
                replica.save(update_fields=["state", "ended_at", "reason", "stopped_at"])
                replica_event(replica, "replica.lost", node=node.hostname)
                routes_changed()
                lost += 1
                if was_live and deployment.status in LIVE_STATUSES and replica.ordinal < deployment.replica_count:
                    (new,) = incarnations_create(deployment=deployment, ordinals=[replica.ordinal])
                    # A successor lost before it was up: what it was to replace waits for this one.
                    Replica.objects.filter(replaced_by=replica).update(replaced_by=new)
            deployment_refresh(deployment_id=deployment.pk)
    # After the row locks are gone: a log line takes the deployment's log lock (services/logs.py).
    for replica in wrote:
        logs_note_lost(replica=replica, node_hostname=node.hostname, last_heartbeat=last_seen)
    return lost


def _kept_by_volume(replica: Replica, node_id: int) -> bool:
    """A replica whose volume lives on this node cannot move: it serves until the drain's
    deadline, then stops and its next incarnation waits for the node (services/placement.py)."""
    needs = volume_services.placement_needs(deployment_id=replica.deployment_id, ordinal=replica.ordinal)
    return needs is not None and needs.node_id == node_id


def _replace_on_draining(node) -> int:
    """Each wanted, unreplaced replica on a draining node gets a replacement placed elsewhere;
    the old one keeps serving until its replacement runs (or the drain deadline passes)."""
    made = 0
    for deployment_id in _deployments_on(node.pk):
        with transaction.atomic():
            deployment = Deployment.objects.select_for_update(of=("self",)).get(pk=deployment_id)
            if deployment.status not in LIVE_STATUSES:
                continue
            for replica in Replica.objects.select_for_update(of=("self",)).filter(
                    live_q(), deployment=deployment, node_id=node.pk):
                if replica.ordinal < deployment.replica_count and not _kept_by_volume(replica, node.pk):
                    successor_create(
                        replica, reason=f"replacing generation {replica.generation} from draining node {node.hostname}",
                        old_reason="draining: serving until its replacement (generation {generation}) runs")
                    made += 1
    if made:
        scheduler_kick()
    return made


def drains_progress() -> int:
    """Draining nodes: past the deadline every remaining replica stops; a node with nothing
    left running becomes `cordoned`. Returns how many nodes finished draining."""
    finished = 0
    now = timezone.now()
    for node in node_selectors.nodes_draining():
        _replace_on_draining(node)
        if node.drain_deadline is not None and node.drain_deadline <= now:
            for deployment_id in _deployments_on(node.pk):
                with transaction.atomic():
                    Deployment.objects.select_for_update(of=("self",)).filter(pk=deployment_id).first()
                    stopping = list(Replica.objects.filter(unfinished_q(), deployment_id=deployment_id, node_id=node.pk)
                                    .filter(desired=Replica.Desired.RUN, replaced_by__isnull=True))
                    replicas_stop(Replica.objects.filter(unfinished_q(), deployment_id=deployment_id, node_id=node.pk)
                                  .filter(desired=Replica.Desired.RUN), reason="drain deadline passed")
                    # Those kept by a volume here get a next incarnation that waits for the node.
                    kept = [r.ordinal for r in stopping if _kept_by_volume(r, node.pk)]
                    deployment = Deployment.objects.get(pk=deployment_id)
                    if kept and deployment.status in LIVE_STATUSES:
                        incarnations_create(deployment=deployment,
                                            ordinals=[o for o in kept if o < deployment.replica_count])
        if not Replica.objects.filter(node_id=node.pk).exclude(state__in=TERMINAL_STATES).exists():
            node_services.node_finish_drain(node_id=node.pk)
            finished += 1
    return finished


def fleet_sweep() -> dict:
    """The periodic pass (Celery beat, every few seconds): silent nodes go offline and lose
    their replicas, drains progress, and whatever is pending is placed."""
    window = getattr(settings, "NODE_LIVENESS_WINDOW_S", 30)
    offline = node_services.nodes_mark_silent_offline(window_s=window)
    lost = sum(node_lost(node_id=n) for n in offline)
    drained = drains_progress()
    placed = schedule_pending()
    # Each drain's own task ends it on time; this catches those whose task was lost.
    replica_drains = drains_end()
    return {"offline": len(offline), "lost": lost, "drained": drained, "placed": placed,
            "replica_drains_ended": replica_drains}
