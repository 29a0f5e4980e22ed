import pytest

from cloud.deployments.models import Deployment, Event
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db


def test_it_deletes_and_answers_like_neuranet(as_alice, acme):
    deployment = deployment_for(acme)
    response = as_alice.delete(f"{URL}/{deployment.pk}")
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Deployment deleted"}
    assert as_alice.get(f"{URL}/{deployment.pk}").status_code == 404
    assert as_alice.get(URL).json()["pagination"]["total"] == 0


def test_it_stops_a_running_deployment_first_and_keeps_the_row_for_billing(as_alice, acme):
    deployment = deployment_for(acme, replica_count=2)
    place_running(deployment)
    as_alice.delete(f"{URL}/{deployment.pk}")
    row = Deployment.objects.get(pk=deployment.pk)
    assert row.deleted_at is not None and row.status == "stopping"
    assert set(row.replicas.values_list("state", flat=True)) == {"stopping"}
    assert Event.objects.filter(deployment=row, type="deployment.deleted").exists()


def test_the_name_is_free_again(as_alice, acme, body):
    first = as_alice.post(URL, body(name="web"), format="json").json()["deployment"]
    as_alice.delete(f"{URL}/{first['id']}")
    assert as_alice.post(URL, body(name="web"), format="json").status_code == 201


def test_deleting_twice_is_a_404(as_alice, acme):
    deployment = deployment_for(acme)
    as_alice.delete(f"{URL}/{deployment.pk}")
    assert as_alice.delete(f"{URL}/{deployment.pk}").status_code == 404


def test_a_deleted_deployment_no_longer_counts_against_quotas(as_alice, acme, body):
    acme.max_deployments = 1
    acme.save()
    first = as_alice.post(URL, body(), format="json").json()["deployment"]
    assert as_alice.post(URL, body(), format="json").status_code == 429
    as_alice.delete(f"{URL}/{first['id']}")
    assert as_alice.post(URL, body(), format="json").status_code == 201
