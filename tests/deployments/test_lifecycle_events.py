"""Every lifecycle change is an Event written with the change (issue 16): a deployment's whole
life through the services and the agent sink, scaling, stops the plane decides, health checks
that keep failing, and operators' node actions, told to the deployments on that node only."""

from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Event
from cloud.deployments.services import (
    deployment_expire_due,
    deployment_stop,
    deployment_update,
    fleet_sweep,
    schedule_pending,
)
from nodes import services as node_services
from nodes.models import Node
from tests.deployments.factories import deployment_for, online_node, report

pytestmark = pytest.mark.django_db


def types(deployment) -> list[str]:
    return list(Event.objects.filter(deployment=deployment).order_by("id").values_list("type", flat=True))


def test_a_deployments_life_is_told_event_by_event(cpu_small, acme):
    online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    schedule_pending()
    replica = deployment.replicas.get()
    for state, fields in (("pulling", {"reason": "pulling 1/9 MB"}), ("pulling", {"reason": "pulling 5/9 MB"}),
                          ("booting", {}), ("starting", {}),
                          ("starting", {"reason": "health check failing: connection refused", "health": "failing"}),
                          ("starting", {"reason": "health check failing: connection refused", "health": "failing"}),
                          ("starting", {"reason": "health check failing: HTTP 503 from GET /", "health": "failing"}),
                          ("running", {"host_port": 30000}), ("restarting", {"exit_code": 1}),
                          ("running", {"host_port": 30000})):
        report(replica, state, **fields)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    report(replica, "stopped", exit_code=0)
    assert types(deployment) == [
        "deployment.created", "replica.placed", "deployment.starting", "replica.pulling", "replica.booting",
        "replica.starting", "replica.health_failing", "replica.health_failing", "replica.running",
        "deployment.running", "replica.restarting", "deployment.starting", "replica.running", "deployment.running",
        "replica.stopping", "deployment.stopping", "replica.stopped", "deployment.stopped",
    ]
    failing = Event.objects.filter(deployment=deployment, type="replica.health_failing").order_by("id")
    assert [e.payload["reason"] for e in failing] == ["health check failing: connection refused",
                                                      "health check failing: HTTP 503 from GET /"]
    assert failing[0].payload["replica_id"] == str(replica.uid) and failing[0].payload["node"] == "node-a"


def test_a_replica_never_placed_is_stopped_with_an_event(acme):
    deployment = deployment_for(acme)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert types(deployment) == ["deployment.created", "replica.stopped", "deployment.stopped"]


def test_scaling_is_an_event_saying_from_what_to_what(cpu_small, acme):
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0)
    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={"replica_count": 3})
    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={"replica_count": 1})
    scaled = Event.objects.filter(deployment=deployment, type="deployment.scaled").order_by("id")
    assert [(e.payload["from"], e.payload["to"]) for e in scaled] == [(1, 3), (3, 1)]
    assert types(deployment).count("replica.stopped") == 2  # the two removed by scale-down, never placed


def test_lost_and_expired_are_events(cpu_small, acme, settings):
    settings.NODE_LIVENESS_WINDOW_S = 30
    node = online_node(cpu_small, "node-a")
    deployment = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0, duration_hours=1)
    schedule_pending()
    report(deployment.replicas.get(), "running", host_port=30000)
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    fleet_sweep()
    assert "replica.lost" in types(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    deployment_expire_due()
    assert types(deployment)[-1] == "deployment.expired"


def test_operators_node_actions_are_told_to_the_deployments_on_that_node_only(cpu_small, acme):
    here, there = online_node(cpu_small, "node-a"), online_node(cpu_small, "node-b")
    on_here = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0, node_id=here.pk)
    elsewhere = deployment_for(acme, hardware_id=cpu_small.pk, gpus_per_container=0, node_id=there.pk)
    schedule_pending()
    node_services.node_cordon(node_id=here.pk)
    node_services.node_uncordon(node_id=here.pk)
    node_services.node_drain(node_id=here.pk)
    node_events = [t for t in types(on_here) if t.startswith("node.")]
    assert node_events == ["node.cordoned", "node.uncordoned", "node.draining"]
    cordoned = Event.objects.get(deployment=on_here, type="node.cordoned")
    assert cordoned.payload == {"node": "node-a", "status": "cordoned", "reason": "cordoned by an operator"}
    assert cordoned.tenant_id == acme.pk
    assert not [t for t in types(elsewhere) if t.startswith("node.")]
