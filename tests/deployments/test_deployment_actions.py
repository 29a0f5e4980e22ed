"""POST /deployments/{id}/start, /stop and /restart, and expiry."""

from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, Replica
from cloud.deployments.services import deployment_expire_due
from cloud.deployments.tasks import deployments_expire_due
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db


def post(client, deployment, verb):
    return client.post(f"{URL}/{deployment.pk}/{verb}")


def test_stopping_a_never_placed_deployment_stops_it_at_once(as_alice, acme):
    deployment = deployment_for(acme, replica_count=2)
    response = post(as_alice, deployment, "stop")
    assert response.status_code == 200
    assert response.json()["deployment"]["status"] == "stopped"
    assert set(deployment.replicas.values_list("state", flat=True)) == {"stopped"}
    assert Event.objects.filter(deployment=deployment, type="deployment.stopped").exists()


def test_stopping_placed_replicas_waits_for_the_node(as_alice, acme):
    deployment = deployment_for(acme)
    place_running(deployment)
    response = post(as_alice, deployment, "stop")
    assert response.json()["deployment"]["status"] == "stopping"
    assert deployment.replicas.get().state == "stopping"


@pytest.mark.parametrize("status", ["stopped", "stopping", "failed", "expired"])
def test_stopping_from_a_stopped_status_is_a_conflict(as_alice, acme, status):
    deployment = deployment_for(acme)
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    response = post(as_alice, deployment, "stop")
    assert response.status_code == 409 and status in response.json()["detail"]


def test_starting_a_stopped_deployment_makes_it_pending_again(as_alice, acme):
    deployment = deployment_for(acme, replica_count=2)
    post(as_alice, deployment, "stop")
    response = post(as_alice, deployment, "start")
    assert response.status_code == 200
    assert response.json()["deployment"]["status"] == "pending"  # nothing fakes progress
    # Each ordinal gets a new incarnation; the stopped ones stay as history.
    rows = set(deployment.replicas.values_list("ordinal", "generation", "state"))
    assert rows == {(0, 1, "stopped"), (1, 1, "stopped"), (0, 2, "pending"), (1, 2, "pending")}
    assert Event.objects.filter(deployment=deployment, type="deployment.started").exists()


@pytest.mark.parametrize("status", ["pending", "starting", "running", "stopping"])
def test_starting_a_live_deployment_is_a_conflict(as_alice, acme, status):
    deployment = deployment_for(acme)
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    assert post(as_alice, deployment, "start").status_code == 409


def test_an_expired_deployment_starts_only_once_extended(as_alice, acme):
    deployment = deployment_for(acme, duration_hours=1)
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(hours=2),
                                                       expires_at=timezone.now() - timedelta(hours=1))
    assert deployment_expire_due() == 1
    assert post(as_alice, deployment, "start").status_code == 409
    assert as_alice.patch(f"{URL}/{deployment.pk}", {"duration_hours": 5}, format="json").status_code == 200
    response = post(as_alice, deployment, "start")
    assert response.status_code == 200 and response.json()["deployment"]["status"] == "pending"


def test_starting_is_quota_checked(as_alice, acme):
    deployment = deployment_for(acme, gpus_per_container=8)
    post(as_alice, deployment, "stop")
    deployment_for(acme, gpus_per_container=8)
    acme.max_gpus = 8
    acme.save()
    response = post(as_alice, deployment, "start")
    assert response.status_code == 429 and response.json()["quota"] == "max_gpus"


def test_restarting_a_running_deployment(as_alice, acme):
    deployment = deployment_for(acme)
    place_running(deployment)
    response = post(as_alice, deployment, "restart")
    assert response.status_code == 200
    assert response.json()["deployment"]["status"] == "starting"
    assert response.json()["deployment"]["status_reason"].startswith("rolling restart: 0 of 1 replaced")
    old, new = deployment.replicas.order_by("generation")
    # Rolling (issue 25): the old incarnation keeps running until its successor is up.
    assert (old.generation, old.desired, old.state, old.replaced_by) == (1, "run", "running", new)
    assert (new.generation, new.desired, new.state, new.node) == (2, "run", "pending", None)
    assert Event.objects.filter(deployment=deployment, type="deployment.restarted").exists()


@pytest.mark.parametrize("status", ["pending", "stopping", "stopped", "failed", "expired"])
def test_restarting_a_deployment_that_is_not_running_is_a_conflict(as_alice, acme, status):
    deployment = deployment_for(acme)
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    assert post(as_alice, deployment, "restart").status_code == 409


def test_the_expiry_task_expires_only_due_deployments(acme):
    due = deployment_for(acme, duration_hours=1)
    later = deployment_for(acme, duration_hours=10)
    forever = deployment_for(acme)
    Deployment.objects.filter(pk=due.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert deployments_expire_due() == 1
    assert deployments_expire_due() == 0  # running it twice changes nothing
    statuses = dict(Deployment.objects.values_list("pk", "status"))
    assert statuses == {due.pk: "expired", later.pk: "pending", forever.pk: "pending"}
    assert set(Replica.objects.filter(deployment=due).values_list("state", flat=True)) == {"stopped"}
    assert Event.objects.filter(deployment=due, type="deployment.expired").count() == 1
