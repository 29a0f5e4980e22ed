import pytest

from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db

EVERY_ID_ROUTE = [
    ("get", ""), ("patch", ""), ("delete", ""), ("post", "/start"), ("post", "/stop"), ("post", "/restart"),
    ("get", "/replicas"), ("get", "/logs"), ("get", "/events"),
]


def test_it_returns_the_deployment(as_alice, acme):
    deployment = deployment_for(acme, name="web", env={"A": "1"})
    response = as_alice.get(f"{URL}/{deployment.pk}")
    assert response.status_code == 200
    shown = response.json()["deployment"]
    assert shown["id"] == str(deployment.pk) and shown["name"] == "web" and shown["env"] == {"A": "1"}
    assert shown["status"] == "pending" and shown["status_reason"]


def test_endpoints_use_the_nodes_public_address_and_host_port(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=11434)
    (replica,) = place_running(deployment)
    shown = as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]
    assert shown["endpoints"] == [
        {"type": "http", "url": f"http://{replica.node.public_address}:{replica.host_port}", "internal_port": 11434}
    ]
    assert "10.88.0.2" not in str(shown)  # the VM's internal address is never shown


@pytest.mark.parametrize(("method", "suffix"), EVERY_ID_ROUTE)
def test_another_tenants_deployment_is_a_404_for_every_verb(as_mallory, acme, method, suffix):
    deployment = deployment_for(acme)
    response = getattr(as_mallory, method)(f"{URL}/{deployment.pk}{suffix}", {}, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    deployment.refresh_from_db()
    assert deployment.status == "pending" and deployment.deleted_at is None


@pytest.mark.parametrize(("method", "suffix"), EVERY_ID_ROUTE)
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", "00000000-0000-0000-0000-000000000000"])
def test_a_bad_or_unknown_id_is_a_404_not_a_500(as_alice, method, suffix, bad_id):
    response = getattr(as_alice, method)(f"{URL}/{bad_id}{suffix}", {}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "suffix"), EVERY_ID_ROUTE)
def test_anonymous_gets_401_for_every_verb(anonymous, acme, method, suffix):
    deployment = deployment_for(acme)
    assert getattr(anonymous, method)(f"{URL}/{deployment.pk}{suffix}", {}, format="json").status_code == 401


@pytest.mark.parametrize(("method", "suffix"), [r for r in EVERY_ID_ROUTE if r[0] != "get"])
def test_a_read_only_token_gets_403_on_writes(as_alice_readonly, acme, method, suffix):
    deployment = deployment_for(acme)
    assert getattr(as_alice_readonly, method)(f"{URL}/{deployment.pk}{suffix}", {}, format="json").status_code == 403


def test_put_is_not_allowed(as_alice, acme):
    deployment = deployment_for(acme)
    assert as_alice.put(f"{URL}/{deployment.pk}", {}, format="json").status_code == 405
