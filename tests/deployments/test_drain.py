"""Issue 25, drain: a replica the gateway routes to leaves the route table as soon as it is told
to stop, but its node keeps its VM running for the deployment's stop grace, so requests already
on it finish; one that does not serve stops at once, as before."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import Meter
from cloud.deployments.models import Deployment, Event, Replica
from cloud.deployments.services import (
    deployment_delete,
    deployment_expire_due,
    deployment_stop,
    deployment_update,
    fleet_sweep,
    schedule_pending,
)
from cloud.deployments.services.drain import drains_end
from cloud.deployments.tasks import drains_end as drains_end_task
from nodes.models import CpuSlot, Node
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, online_node, report
from tests.deployments.fleet_sim import desired_on, serving

pytestmark = pytest.mark.django_db


@pytest.fixture
def node(cpu_small):
    node = online_node(cpu_small, "node-a")
    Node.objects.filter(pk=node.pk).update(public_address="198.51.100.10")
    return node


def running(deployment) -> list[Replica]:
    """Its replicas placed and reported running (with a host port when the deployment serves)."""
    schedule_pending()
    replicas = list(deployment.replicas.filter(desired="run").order_by("ordinal"))
    for replica in replicas:
        report(replica, "running", address="192.0.2.2", host_port=30000 + replica.ordinal)
        replica.refresh_from_db()
    return replicas


def web(acme, cpu_small, **spec) -> Deployment:
    spec = {"hardware_id": cpu_small.pk, "gpus_per_container": 0, "traffic_port": 8080, "stop_grace_seconds": 20,
            **spec}
    return deployment_for(acme, **spec)


def test_a_serving_replica_leaves_the_route_table_at_once_and_its_node_keeps_it_until_the_drain_ends(
        node, acme, cpu_small):
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    assert serving(deployment) == {str(replica.uid)}

    before = timezone.now()
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    replica.refresh_from_db()
    assert serving(deployment) == set()  # the gateway sends it nothing new
    assert (replica.desired, replica.state) == ("stop", "stopping")
    assert before + timedelta(seconds=20) <= replica.drain_until <= timezone.now() + timedelta(seconds=20)
    assert desired_on(node) == {str(replica.uid)}  # its VM keeps running: requests on it finish
    event = Event.objects.get(deployment=deployment, type="replica.draining")
    assert event.payload["drain_until"] == replica.drain_until.isoformat()
    assert event.payload["replica_id"] == str(replica.uid)
    assert Deployment.objects.get(pk=deployment.pk).status == "stopping"

    assert drains_end(now=replica.drain_until - timedelta(seconds=1)) == 0  # not yet
    assert desired_on(node) == {str(replica.uid)}
    assert drains_end(now=replica.drain_until) == 1
    assert desired_on(node) == set()  # now its node stops it, as for any stop
    assert drains_end(now=replica.drain_until) == 0  # ended once

    report(replica, "stopped", exit_code=0)
    replica.refresh_from_db()
    assert replica.state == "stopped" and replica.stopped_at >= replica.booted_at
    assert Deployment.objects.get(pk=deployment.pk).status == "stopped"
    assert CpuSlot.objects.filter(replica__isnull=False).count() == 0


def test_the_vm_is_billed_while_it_drains(node, acme, cpu_small):
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    replica.refresh_from_db()
    # Billing meters up to stopped_at, the node's word that the VM ended: the VM runs while it
    # drains, and the drain is the customer's grace, billed like the rest.
    assert replica.stopped_at is None and not Meter.objects.get(replica=replica).closed
    drains_end(now=replica.drain_until)
    report(replica, "stopped", exit_code=0)
    replica.refresh_from_db()
    assert replica.stopped_at is not None


@pytest.mark.parametrize("make", ["starting", "failing", "no traffic port", "no grace", "no host port"])
def test_a_replica_that_does_not_serve_stops_at_once(node, acme, cpu_small, make):
    spec = {}
    if make == "no traffic port":
        spec["traffic_port"] = None
    if make == "no grace":
        spec["stop_grace_seconds"] = 0
    deployment = web(acme, cpu_small, **spec)
    schedule_pending()
    replica = deployment.replicas.get()
    if make == "starting":
        report(replica, "starting")
    elif make == "failing":
        report(replica, "running", host_port=30000, health="failing")
    elif make == "no host port":
        report(replica, "running")
    else:
        report(replica, "running", host_port=30000)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    replica.refresh_from_db()
    assert replica.drain_until is None and replica.state == "stopping"
    assert desired_on(node) == set()
    assert not Event.objects.filter(deployment=deployment, type="replica.draining").exists()
    assert Event.objects.filter(deployment=deployment, type="replica.stopping").exists()


def test_every_way_of_stopping_a_serving_replica_drains_it(node, acme, cpu_small):
    scaled = web(acme, cpu_small, name="scaled", replica_count=2)
    deleted = web(acme, cpu_small, name="deleted")
    expired = web(acme, cpu_small, name="expired", duration_hours=1)
    _, removed = running(scaled)
    (gone,) = running(deleted)
    (late,) = running(expired)

    deployment_update(tenant=acme, actor=None, deployment_id=scaled.pk, changes={"replica_count": 1})
    deployment_delete(tenant=acme, actor=None, deployment_id=deleted.pk)
    Deployment.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    deployment_expire_due()

    for replica in (removed, gone, late):
        replica.refresh_from_db()
        assert replica.desired == "stop" and replica.drain_until is not None, replica
        assert str(replica.uid) in desired_on(node)
    assert len(serving(scaled)) == 1 and serving(expired) == set()


def test_a_second_stop_does_not_cut_a_drain_short(node, acme, cpu_small):
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    replica.refresh_from_db()
    until = replica.drain_until
    deployment_delete(tenant=acme, actor=None, deployment_id=deployment.pk)
    replica.refresh_from_db()
    assert replica.drain_until == until and desired_on(node) == {str(replica.uid)}


def test_a_late_running_report_during_the_drain_does_not_put_it_back_in_the_pool(node, acme, cpu_small):
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    report(replica, "running", address="192.0.2.2", host_port=30000)
    replica.refresh_from_db()
    assert replica.state == "stopping" and serving(deployment) == set()


def test_the_fleet_sweep_and_the_task_end_drains_whose_countdown_was_lost(node, acme, cpu_small):
    first, second = web(acme, cpu_small, name="one"), web(acme, cpu_small, name="two")
    (a,), (b,) = running(first), running(second)
    deployment_stop(tenant=acme, actor=None, deployment_id=first.pk)
    deployment_stop(tenant=acme, actor=None, deployment_id=second.pk)
    Replica.objects.filter(pk=a.pk).update(drain_until=timezone.now() - timedelta(seconds=1))
    assert fleet_sweep()["replica_drains_ended"] == 1
    assert desired_on(node) == {str(b.uid)}
    Replica.objects.filter(pk=b.pk).update(drain_until=timezone.now() - timedelta(seconds=1))
    assert drains_end_task() == 1
    assert desired_on(node) == set()


def test_a_node_lost_while_its_replica_drains_ends_it(node, acme, cpu_small, settings):
    settings.NODE_LIVENESS_WINDOW_S = 30
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    fleet_sweep()
    replica.refresh_from_db()
    assert replica.state == "lost"
    assert Deployment.objects.get(pk=deployment.pk).status == "stopped"


def test_the_api_shows_when_a_draining_replica_leaves_its_node(as_alice, node, acme, cpu_small):
    deployment = web(acme, cpu_small)
    (replica,) = running(deployment)
    shown = as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"]
    assert shown[0]["drain_until"] is None
    as_alice.post(f"{URL}/{deployment.pk}/stop")
    replica.refresh_from_db()
    (shown,) = as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"]
    assert (shown["state"], shown["desired"]) == ("stopping", "stop")
    assert shown["drain_until"].replace("Z", "+00:00") == replica.drain_until.isoformat()
