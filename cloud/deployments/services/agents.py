"""What node agents tell the plane about replicas, and what the plane wants them to run: the
`nodes.link.ReplicaSink` the agent consumer calls (registered in DeploymentsConfig.ready()).

A node may only speak of replicas placed on it (else `NotPlacedHere`, which the consumer turns
into an error frame). A report never revives an incarnation the plane has ended (`lost`, or a
stop the node has not confirmed yet): the plane's intent wins and the fence stops the VM. GPUs
and slots are freed only when the node says the VM is gone.
"""

from __future__ import annotations

import collections
import logging
import threading

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from billing.services import meter_open
from cloud.deployments.models import Deployment, LogLine, Replica
from cloud.deployments.services import drain, placement, rolling
from cloud.deployments.services.events import event_record
from cloud.deployments.services.gateways import routes_changed
from cloud.deployments.services.kick import scheduler_kick
from cloud.deployments.services.logs import logs_heads_remember, logs_store
from cloud.deployments.services.status import deployment_refresh, replica_event
from cloud.validators import as_uuid
from nodes import link
from nodes import selectors as node_selectors
from protocol.wire import DesiredReplica, LogEntry, ReplicaReport, ReplicaSpec
from volumes import selectors as volume_selectors
from volumes.services import mounts_for
from protocol.vocabulary import BOOTING, DRAINING, FAILED, FAILING, RESTARTING, RUNNING, STARTING, STOPPED, TERMINAL_STATES, VM_ENDED_STATES

log = logging.getLogger(__name__)
R = Replica.State
# What a node reports once a replica's VM process has started. Not `stopping`: a node also says
# that of a start it is cancelling, before any VM ran.
_BOOTED = (BOOTING, STARTING, RUNNING, RESTARTING)


def _replica_locked(node_id: int, replica_id: str) -> Replica:
    """The incarnation a report is about, locked (its deployment first, as every writer does)."""
    uid = as_uuid(replica_id)
    row = Replica.objects.filter(uid=uid).values("pk", "node_id", "deployment_id").first() if uid else None
    if row is None or row["node_id"] != node_id:
        raise link.NotPlacedHere(f"replica {replica_id[:40]} is not placed on this node")
    Deployment.objects.select_for_update(of=("self",)).filter(pk=row["deployment_id"]).first()
    return Replica.objects.select_for_update(of=("self",)).select_related("deployment", "node").get(pk=row["pk"])


# A log batch names its replica (by uid) up to some forty times a second: which incarnation that
# is, and that it is on the sending node, is looked up once. Both are fixed for an incarnation's
# life (a replica is placed once; a move is a new incarnation), so the entry never goes stale.
_LOG_TARGETS_MAX = 4096
_log_targets: collections.OrderedDict[tuple[int, str], Replica] = collections.OrderedDict()
_log_targets_lock = threading.Lock()


def _log_target(node_id: int, replica_id: str) -> Replica:
    key = (node_id, replica_id)
    with _log_targets_lock:
        replica = _log_targets.get(key)
        if replica is not None:
            _log_targets.move_to_end(key)
            return replica
    uid = as_uuid(replica_id)
    # Its tenant comes along (the log caps count per tenant), cached with it.
    replica = (Replica.objects.filter(uid=uid).select_related("deployment")
               .only("id", "uid", "node_id", "deployment_id", "ordinal", "generation", "deployment__tenant_id")
               .first() if uid else None)
    if replica is None or replica.node_id != node_id:
        raise link.NotPlacedHere(f"replica {replica_id[:40]} is not placed on this node")
    with _log_targets_lock:
        _log_targets[key] = replica
        while len(_log_targets) > _LOG_TARGETS_MAX:
            _log_targets.popitem(last=False)
    return replica


def _vm_gone(replica: Replica) -> None:
    replica.vm_gone = True
    if placement.units_release(replica):
        scheduler_kick()


def _host_ports(deployment: Deployment, report: ReplicaReport) -> dict[str, int]:
    """The report's published ports that are the deployment's own, on a host port that can be
    one: the route table sends them to every gateway, which refuses a whole table over one bad
    port, so a node's word is not enough."""
    ours = {str(port) for port in (deployment.traffic_port, *(entry["port"] for entry in deployment.expose)) if port}
    return {guest: host for guest, host in sorted(report.host_ports.items()) if guest in ours and 0 < host < 65536}


def _apply(replica: Replica, report: ReplicaReport) -> None:
    now = timezone.now()
    old_state, old_reason = replica.state, replica.reason
    old_health, old_host_port, old_host_ports = replica.health, replica.host_port, replica.host_ports
    replica.last_report_at = now
    if report.state in VM_ENDED_STATES:
        if not replica.vm_gone:
            _vm_gone(replica)
    if replica.state in TERMINAL_STATES:
        replica.save(update_fields=["last_report_at", "vm_gone"])
        return  # ended on the plane (lost or stopped): the node's word no longer moves it
    wanted_stop = replica.desired == Replica.Desired.STOP
    # A reason quotes the guest (its last stderr lines): one too long for the column must not
    # make the report fail, or the replica's end (its meter's end, its GPUs) is never recorded.
    limit = Replica._meta.get_field("reason").max_length
    reason = report.reason if len(report.reason) <= limit else report.reason[:limit - 1] + "…"
    booted = report.state in _BOOTED and replica.booted_at is None
    if booted:
        # Its VM process runs (or did, for a report that skipped `booting`): billing starts on
        # the plane's clock, whatever the node's clock or the guest say.
        replica.booted_at = now
    if report.state in VM_ENDED_STATES:
        replica.state = R.STOPPED if wanted_stop else report.state
        replica.ended_at = now
        if replica.booted_at is not None and replica.stopped_at is None:
            replica.stopped_at = now  # a node reports the end only once QEMU is gone
        replica.reason = (reason or replica.reason) if not wanted_stop else (replica.reason or "stopped")
    elif wanted_stop:
        replica.state = R.STOPPING  # a late report from before the stop must not undo it
    else:
        replica.state = report.state
        replica.reason = reason
        if report.state == R.RUNNING and replica.started_at is None:
            replica.started_at = now
    replica.vm_address = report.address
    replica.host_port = report.host_port
    replica.host_ports = _host_ports(replica.deployment, report)
    replica.exit_code = report.exit_code
    replica.health = report.health  # a failing check takes it out of the gateway's pool (routes.py)
    replica.save(update_fields=["state", "reason", "vm_address", "host_port", "host_ports", "exit_code", "health",
                                "booted_at", "started_at", "stopped_at", "ended_at", "vm_gone", "last_report_at"])
    if booted:
        # Metering starts in the same transaction as the VM's start: even an incarnation that
        # fails before it ever runs, or before the next metering pass, is charged for every
        # second it held its GPUs.
        meter_open(replica=replica)
    node = replica.node.hostname if replica.node_id else None
    if replica.state != old_state:
        replica_event(replica, f"replica.{replica.state}", node=node)
    elif report.health == FAILING and replica.state == R.STARTING and replica.reason != old_reason:
        replica_event(replica, "replica.health_failing", node=node)  # once per new reason, not per attempt
    elif replica.state == R.RUNNING and replica.health != old_health:
        # A running replica's check failing (after the agent's repeated tries) or passing again:
        # it leaves or rejoins the gateway's pool. Once per change, not per report.
        replica_event(replica, "replica.health_failing" if replica.health == FAILING else "replica.health_passing",
                      node=node)
    if ((replica.state, replica.health, replica.host_port, replica.host_ports)
            != (old_state, old_health, old_host_port, old_host_ports)):
        routes_changed()  # only a change the route table can see: most reports change nothing
    if drain.replica_up(replica):
        rolling.successor_up(replica)  # what it replaces (if anything) drains and stops
    elif replica.state in TERMINAL_STATES and replica.desired == Replica.Desired.RUN:
        rolling.successor_ended(replica)  # what it was to replace (if anything) serves on
    deployment_refresh(deployment_id=replica.deployment_id)


class AgentSink:
    def report(self, *, node_id: int, report: ReplicaReport) -> None:
        with transaction.atomic():
            _apply(_replica_locked(node_id, report.replica_id), report)

    def hello(self, *, node_id: int, reports: list[ReplicaReport]) -> None:
        """The node's view after a (re)connect. Reports about replicas it does not hold are
        ignored (the desired set stops those VMs); replicas it should hold but no longer has
        are over, and their units free."""
        seen = set()
        for report in reports:
            try:
                self.report(node_id=node_id, report=report)
                seen.add(as_uuid(report.replica_id))
            except link.NotPlacedHere:
                continue
        with transaction.atomic():
            missing = (Replica.objects.filter(node_id=node_id, vm_gone=False)
                       .exclude(uid__in=seen).exclude(state=R.PENDING).values_list("pk", "deployment_id"))
            for pk, deployment_id in list(missing):
                Deployment.objects.select_for_update(of=("self",)).filter(pk=deployment_id).first()
                replica = Replica.objects.select_for_update(of=("self",)).select_related("deployment", "node").get(pk=pk)
                if replica.state in TERMINAL_STATES or replica.desired == Replica.Desired.STOP:
                    gone = ReplicaReport(replica_id=str(replica.uid), state=STOPPED)
                else:
                    gone = ReplicaReport(replica_id=str(replica.uid), state=FAILED,
                                         reason="its node no longer has the VM (the host restarted or its data was lost)")
                _apply(replica, gone)

    def logs(self, *, node_id: int, replica_id: str, lines: list[LogEntry]) -> int:
        return logs_store(replica=_log_target(node_id, replica_id), lines=lines)

    def desired(self, *, node_id: int) -> list[DesiredReplica]:
        replicas = list(
            Replica.objects.filter(drain.desired_set_q(now=timezone.now()), node_id=node_id)
            .exclude(state__in=TERMINAL_STATES)
            .select_related("deployment__hardware_type").order_by("created_at", "id")
        )
        acked = dict(
            LogLine.objects.filter(replica__in=replicas).values("replica_id").annotate(m=Max("seq"))
            .values_list("replica_id", "m")
        )
        bdfs = node_selectors.gpu_bdfs_by_replica(replicas)
        return [
            DesiredReplica(replica_id=str(r.uid), spec=replica_spec(r, gpu_bdfs=bdfs.get(r.pk, [])),
                           stop_grace_s=float(r.deployment.stop_grace_seconds), acked_seq=acked.get(r.pk, 0))
            for r in replicas
        ]

    def node_online(self, *, node_id: int) -> None:
        with transaction.atomic():
            scheduler_kick()

    def log_heads(self, *, node_id: int, heads: dict[str, int]) -> None:
        uids = {uid: seq for key, seq in heads.items() if (uid := as_uuid(key)) is not None and seq > 0}
        mine = Replica.objects.filter(node_id=node_id, uid__in=list(uids)).values_list("uid", flat=True)
        logs_heads_remember({str(uid): uids[uid] for uid in mine})  # only replicas placed on this node

    def unfinished_replicas(self):
        return Replica.objects.exclude(state__in=TERMINAL_STATES)

    def node_changed(self, *, node_id: int, status: str, reason: str) -> None:
        hostname = node_selectors.node_hostname(node_id)
        deployments = (Replica.objects.filter(node_id=node_id).exclude(state__in=TERMINAL_STATES)
                       .values_list("deployment_id", "deployment__tenant_id", "deployment__name").distinct())
        # A drain moves replicas elsewhere, except those whose volumes live here: they stop at
        # the drain's deadline and wait for this node (services/fleet.py). Each deployment hears
        # which of its volumes keep it; the operator's log line names them all.
        pinned = volume_selectors.volumes_on_node_of(node_id=node_id) if status == DRAINING else {}
        if pinned:
            log.warning("node %s drains, but volumes keep deployments there (they stop and wait, not move): %s",
                        hostname, "; ".join(f"{v} keeps {', '.join(d)}" for v, d in sorted(pinned.items())))
        for deployment_id, tenant_id, name in deployments:
            payload = {"node": hostname, "status": status, "reason": reason}
            kept = sorted(v for v, names in pinned.items() if name in names)
            if kept:
                payload["volumes"] = kept
                payload["reason"] = (f"{reason}; volumes {', '.join(kept)} live on this node, so this deployment's "
                                     "replicas there are not moved: they stop at the drain's deadline and wait for it")
            event_record(tenant_id=tenant_id, deployment_id=deployment_id, type=f"node.{status}", payload=payload)


def replica_spec(replica: Replica, *, gpu_bdfs: list[str]) -> ReplicaSpec:
    """The spec a node runs; the only place secrets are decrypted (they travel to the node, and
    to no log, event or API answer)."""
    d = replica.deployment
    hardware = d.hardware_type
    units = 1 if hardware.cpu_only else max(d.gpus_per_container, 1)
    return ReplicaSpec(
        name=str(replica.uid), image=d.image, tenant_id=str(d.tenant_id),
        registry_username=d.registry_username or None, registry_password=d.get_registry_secret() if d.registry_username else None,
        env={**d.env, "GANTRY_DEPLOYMENT_ID": str(d.pk), "GANTRY_REPLICA_ORDINAL": str(replica.ordinal)},
        secret_env=d.get_secret_env(), entrypoint=d.entrypoint, args=d.args, traffic_port=d.traffic_port,
        health_path=d.health_check_path or None, ports=[entry["port"] for entry in d.expose],
        vcpus=max(hardware.vcpus_per_gpu * units, 1), memory_mib=max(hardware.memory_gib_per_gpu * units * 1024, 256),
        gpu_bdfs=gpu_bdfs, volumes=mounts_for(deployment_id=d.pk, ordinal=replica.ordinal),
    )
