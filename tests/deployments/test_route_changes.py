"""Issue 25: which writes ask for a route push. Agent reports only when the route table can see
the change (a replica's state, health or host ports), never on every heartbeat-like report; a
running replica whose check turns failing (or passes again) is one event per change; every
lifecycle service asks; writes that do not touch routes do not."""

from __future__ import annotations

import pytest

from cloud.deployments.models import Event
from cloud.deployments.services import (
    deployment_delete,
    deployment_restart,
    deployment_start,
    deployment_stop,
    deployment_update,
    node_lost,
    schedule_pending,
)
from tests.deployments.factories import NodeFactory, deployment_for, place_running, report

pytestmark = pytest.mark.django_db

# Every module that asks, patched where it asks.
ASKERS = ("agents", "create", "change", "lifecycle", "status", "fleet", "placement", "endpoint_keys")


@pytest.fixture
def pushes(monkeypatch):
    asked = []
    for module in ASKERS:
        monkeypatch.setattr(f"cloud.deployments.services.{module}.routes_changed", lambda module=module: asked.append(module))
    return asked


@pytest.fixture
def running(acme):
    deployment = deployment_for(acme, name="web", traffic_port=8080)
    (replica,) = place_running(deployment)
    return replica


def health_events(replica) -> list[str]:
    return list(Event.objects.filter(deployment=replica.deployment, type__startswith="replica.health")
                .order_by("id").values_list("type", flat=True))


def test_a_report_that_changes_nothing_routed_asks_nothing(running, pushes):
    report(running, "running", host_port=running.host_port)
    report(running, "running", host_port=running.host_port, reason="still fine")
    assert pushes == []


@pytest.mark.parametrize("change", [
    {"state": "restarting", "host_port": 30000},
    {"state": "running", "host_port": 30999},
    {"state": "running", "host_port": 30000, "health": "failing"},
    {"state": "running", "host_port": 30000, "host_ports": {"8080": 30000}},  # its host ports, reported at last
    {"state": "stopped"},
])
def test_a_report_that_changes_state_health_or_port_asks_once(running, pushes, change):
    state = change.pop("state")
    report(running, state, **change)
    assert pushes.count("agents") == 1


def test_a_running_replica_failing_its_check_is_one_event_per_change(running, pushes):
    for _ in range(3):
        report(running, "running", host_port=30000, health="failing", reason="health check failing: HTTP 502 from GET /")
    assert health_events(running) == ["replica.health_failing"]
    failing = Event.objects.get(deployment=running.deployment, type="replica.health_failing")
    assert failing.payload["reason"] == "health check failing: HTTP 502 from GET /"
    assert failing.payload["state"] == "running" and failing.payload["replica_id"] == str(running.uid)
    for _ in range(2):
        report(running, "running", host_port=30000)
    assert health_events(running) == ["replica.health_failing", "replica.health_passing"]
    assert pushes == ["agents", "agents"]  # out of the pool, back in
    running.refresh_from_db()
    assert running.health == "" and running.state == "running"


def test_a_replica_that_starts_running_healthy_records_no_recovery(acme):
    deployment = deployment_for(acme, name="boot", traffic_port=8080)
    (replica,) = place_running(deployment)
    report(replica, "starting")
    report(replica, "starting", health="failing", reason="health check failing: connection refused")
    report(replica, "running", host_port=30000)
    assert health_events(replica) == ["replica.health_failing"]


def test_lifecycle_writes_ask(acme, pushes):
    deployment = deployment_for(acme, name="life", traffic_port=8080, replica_count=2)
    assert pushes == ["create"]
    place_running(deployment)
    for service in (deployment_restart, deployment_stop):
        pushes.clear()
        service(tenant=acme, actor=None, deployment_id=deployment.pk)
        assert "lifecycle" in pushes, service.__name__
    for replica in deployment.replicas.filter(state="stopping"):
        report(replica, "stopped")
    pushes.clear()
    deployment_start(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert "lifecycle" in pushes
    pushes.clear()
    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={"replica_count": 1})
    assert "change" in pushes
    pushes.clear()
    deployment_delete(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert "lifecycle" in pushes


def test_a_lost_node_asks(acme, pushes):
    deployment = deployment_for(acme, name="lost", traffic_port=8080)
    (replica,) = place_running(deployment, node=NodeFactory(status="offline"))
    pushes.clear()
    node_lost(node_id=replica.node_id)
    assert "fleet" in pushes


def test_a_capacity_shortage_asks_once(acme, pushes):
    deployment_for(acme, name="big", traffic_port=8080)
    pushes.clear()
    schedule_pending()
    schedule_pending()  # the same reason again: nothing new to say
    assert pushes == ["placement"]
