from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, Replica
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db


def patch(client, deployment, data):
    return client.patch(f"{URL}/{deployment.pk}", data, format="json")


def test_scaling_up_adds_pending_replicas(as_alice, acme):
    deployment = deployment_for(acme, replica_count=1)
    response = patch(as_alice, deployment, {"replica_count": 3})
    assert response.status_code == 200, response.json()
    assert response.json()["deployment"]["replica_count"] == 3
    states = list(deployment.replicas.order_by("ordinal").values_list("ordinal", "state"))
    assert states == [(0, "pending"), (1, "pending"), (2, "pending")]
    assert Event.objects.filter(deployment=deployment, type="deployment.updated").exists()


def test_scaling_down_stops_unplaced_replicas_at_once_and_placed_ones_on_their_node(as_alice, acme):
    deployment = deployment_for(acme, replica_count=3)
    place_running(deployment)
    Replica.objects.filter(deployment=deployment, ordinal=2).update(node=None, state="pending")
    response = patch(as_alice, deployment, {"replica_count": 1})
    assert response.status_code == 200
    # Nothing is deleted: the removed ordinals' rows stay, ended or ending.
    assert dict(deployment.replicas.values_list("ordinal", "state")) == {0: "running", 1: "stopping", 2: "stopped"}
    assert set(deployment.replicas.filter(ordinal__gte=1).values_list("desired", flat=True)) == {"stop"}


def test_scaling_down_then_up_gives_replica_count_live_replicas(as_alice, acme):
    deployment = deployment_for(acme, replica_count=3)
    place_running(deployment)
    patch(as_alice, deployment, {"replica_count": 1})
    response = patch(as_alice, deployment, {"replica_count": 3})
    assert response.status_code == 200
    live = deployment.replicas.filter(desired="run").exclude(state__in=("stopped", "failed", "lost"))
    assert sorted(live.values_list("ordinal", "generation")) == [(0, 1), (1, 2), (2, 2)]
    assert deployment.replicas.count() == 5


def test_scaling_up_is_quota_checked(as_alice, acme):
    acme.max_gpus = 2
    acme.save()
    deployment = deployment_for(acme, replica_count=1)
    response = patch(as_alice, deployment, {"replica_count": 3})
    assert response.status_code == 429
    assert response.json()["quota"] == "max_gpus"
    deployment.refresh_from_db()
    assert deployment.replica_count == 1 and deployment.replicas.count() == 1


def test_extending_duration_moves_expiry_later(as_alice, acme):
    deployment = deployment_for(acme, duration_hours=2)
    response = patch(as_alice, deployment, {"duration_hours": 5})
    assert response.status_code == 200
    deployment.refresh_from_db()
    assert deployment.expires_at == deployment.created_at + timedelta(hours=5)


def test_shortening_duration_is_a_400(as_alice, acme):
    deployment = deployment_for(acme, duration_hours=5)
    response = patch(as_alice, deployment, {"duration_hours": 2})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "duration_hours"


def test_a_duration_ending_in_the_past_is_a_400(as_alice, acme):
    deployment = deployment_for(acme)
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(hours=10))
    response = patch(as_alice, deployment, {"duration_hours": 3})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "duration_hours"


def test_env_is_replaced(as_alice, acme):
    deployment = deployment_for(acme, env={"A": "1", "B": "2"})
    response = patch(as_alice, deployment, {"env_variables": {"C": "3"}})
    assert response.json()["deployment"]["env"] == {"C": "3"}


def test_secret_env_is_replaced_and_never_shown(as_alice, acme):
    deployment = deployment_for(acme, secret_env={"OLD": "old-secret"})
    response = patch(as_alice, deployment, {"secret_env_variables": {"NEW": "new-secret-value"}})
    assert response.status_code == 200
    assert response.json()["deployment"]["secret_env_keys"] == ["NEW"]
    assert "new-secret-value" not in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.get_secret_env() == {"NEW": "new-secret-value"}


def test_a_plain_name_that_is_already_secret_is_refused(as_alice, acme):
    deployment = deployment_for(acme, secret_env={"TOKEN": "x"})
    response = patch(as_alice, deployment, {"env": {"TOKEN": "plain"}})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "env"


@pytest.mark.parametrize(("data", "field"), [
    ({"name": "renamed"}, "name"), ({"image_url": "nginx"}, "image_url"), ({"gpus_per_container": 2}, "gpus_per_container"),
    ({"replica_count": 0}, "replica_count"), ({"replica_count": "2"}, "replica_count"), ({"replica_count": 101}, "replica_count"),
    ({"duration_hours": -1}, "duration_hours"), ({"env": {"1X": "y"}}, "env.1X"), ({"env": "A=1"}, "env"),
    ({"secret_env_variables": {"K": 1}}, "secret_env_variables.K"),
])
def test_anything_else_is_a_400_naming_the_field(as_alice, acme, data, field):
    deployment = deployment_for(acme)
    response = patch(as_alice, deployment, data)
    assert response.status_code == 400
    assert field in {e["field"] for e in response.json()["errors"]}


def test_scaling_a_stopping_deployment_is_a_conflict(as_alice, acme):
    deployment = deployment_for(acme)
    place_running(deployment)
    as_alice.post(f"{URL}/{deployment.pk}/stop")
    assert patch(as_alice, deployment, {"replica_count": 2}).status_code == 409
