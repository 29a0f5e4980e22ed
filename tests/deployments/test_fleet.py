"""Nodes going silent, coming back, draining; deployments expiring: what happens to replicas.
Reports come through the same sink the agent consumer calls."""

from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services import deployment_expire_due, fleet_sweep, schedule_pending
from cloud.deployments.services.agents import AgentSink
from nodes import services as node_services
from nodes.models import CpuSlot, Node
from protocol.wire import ReplicaReport
from tests.deployments.factories import deployment_for, online_node, report

pytestmark = pytest.mark.django_db
sink = AgentSink()


def running(deployment) -> Replica:
    replica = deployment.replicas.get(desired="run", state="pending", node__isnull=False)
    report(replica, "running", address="192.0.2.2", host_port=30000)
    replica.refresh_from_db()
    return replica


def test_a_silent_node_goes_offline_its_replica_is_lost_and_replaced_elsewhere(cpu_small, acme, settings):
    settings.NODE_LIVENESS_WINDOW_S = 30
    first = online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0, node_id=None)
    schedule_pending()
    old = running(deployment)
    assert old.node == first
    second = online_node(cpu_small, "node-b")
    Node.objects.filter(pk=first.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    result = fleet_sweep()
    assert result["offline"] == 1 and result["lost"] == 1
    old.refresh_from_db()
    assert old.state == "lost" and "stopped answering" in old.reason
    assert old.stopped_at is not None  # metered up to the last heartbeat, not to now
    assert CpuSlot.objects.filter(replica=old).count() == 1  # held until the node says the VM is gone
    new = deployment.replicas.get(generation=2)
    assert (new.ordinal, new.node, new.state) == (0, second, "pending")
    assert Node.objects.get(pk=first.pk).status == "offline"


def test_a_node_that_comes_back_is_fenced_and_its_units_freed(cpu_small, acme):
    first = online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    old = running(deployment)
    online_node(cpu_small, "node-b")
    Node.objects.filter(pk=first.pk).update(last_heartbeat=timezone.now() - timedelta(minutes=5))
    fleet_sweep()
    # The partition heals: the node says hello, still running the old VM.
    node_services.node_connected(node_id=first.pk, inventory=_inventory())
    sink.hello(node_id=first.pk, reports=[ReplicaReport(replica_id=str(old.uid), state="running")])
    old.refresh_from_db()
    assert old.state == "lost"  # the node's word does not revive it
    assert sink.desired(node_id=first.pk) == []  # the fence: the node stops the old VM
    # Once the node reports it gone, its slot is free again.
    report(old, "stopped")
    assert CpuSlot.objects.filter(replica=old).count() == 0


def test_hello_without_a_replica_it_should_run_ends_that_incarnation(cpu_small, acme):
    online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    replica = running(deployment)
    sink.hello(node_id=replica.node_id, reports=[])
    replica.refresh_from_db()
    assert replica.state == "failed" and "no longer has the VM" in replica.reason
    assert CpuSlot.objects.filter(replica__isnull=False).count() == 0
    assert Deployment.objects.get(pk=deployment.pk).status == "failed"


def test_drain_places_replacements_first_and_stops_the_old_once_they_run(cpu_small, acme):
    first = online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    old = running(deployment)
    second = online_node(cpu_small, "node-b")
    node_services.node_drain(node_id=first.pk)
    fleet_sweep()
    old.refresh_from_db()
    new = deployment.replicas.get(generation=2)
    assert (old.desired, old.state, old.replaced_by) == ("run", "running", new)  # still serving
    assert new.node == second
    assert Deployment.objects.get(pk=deployment.pk).status == "running"
    report(new, "running", host_port=30001)
    old.refresh_from_db()
    assert (old.desired, old.state) == ("stop", "stopping")
    report(old, "stopped")
    fleet_sweep()
    assert Node.objects.get(pk=first.pk).status == "cordoned"  # drained; uncordon to use again
    assert Deployment.objects.get(pk=deployment.pk).status == "running"


def test_drain_deadline_stops_what_could_not_move(cpu_small, acme):
    first = online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    old = running(deployment)
    node_services.node_drain(node_id=first.pk, timeout_s=0)
    fleet_sweep()
    old.refresh_from_db()
    assert (old.desired, old.state) == ("stop", "stopping")
    new = deployment.replicas.get(generation=2)
    assert new.node is None and "no capacity" in new.reason


def test_cordoned_nodes_get_nothing_new_and_uncordon_places_what_waits(cpu_small, acme):
    node = online_node(cpu_small, "node-a")
    node_services.node_cordon(node_id=node.pk)
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    assert deployment.replicas.get().node is None
    node_services.node_uncordon(node_id=node.pk)
    schedule_pending()
    assert deployment.replicas.get().node == node


def test_expiry_stops_placed_replicas_through_their_node(cpu_small, acme):
    online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0, duration_hours=1)
    schedule_pending()
    replica = running(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert deployment_expire_due() == 1
    replica.refresh_from_db()
    assert (replica.desired, replica.state) == ("stop", "stopping")
    assert sink.desired(node_id=replica.node_id) == []
    report(replica, "stopped")
    assert Deployment.objects.get(pk=deployment.pk).status == "expired"
    assert CpuSlot.objects.filter(replica__isnull=False).count() == 0


def test_a_late_running_report_does_not_undo_a_stop(cpu_small, acme):
    online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    replica = running(deployment)
    from cloud.deployments.services import deployment_stop

    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    report(replica, "running")
    replica.refresh_from_db()
    assert replica.state == "stopping"


def test_restart_is_a_new_incarnation_and_the_old_one_keeps_its_logs(cpu_small, acme):
    online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    old = running(deployment)
    from cloud.deployments.services import deployment_restart
    from protocol.wire import LogEntry

    sink.logs(node_id=old.node_id, replica_id=str(old.uid), lines=[LogEntry(seq=1, ts=1.0, stream="stdout", message="hi")])
    deployment_restart(tenant=acme, actor=None, deployment_id=deployment.pk)
    report(old, "stopped")
    schedule_pending()
    new = deployment.replicas.get(generation=2)
    assert new.node is not None and new.uid != old.uid
    assert old.log_lines.count() == 1 and Replica.objects.filter(pk=old.pk).exists()


def _inventory():
    from protocol.wire import Inventory

    return Inventory(hostname="box", agent_version="t", cpus=1, memory_mib=1, disk_gib=1, accelerator="tcg")
