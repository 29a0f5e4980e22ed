import pytest

from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running, report

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


def test_the_endpoint_is_the_gateway_name_and_the_node_address_only_the_replicas(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=11434)
    (replica,) = place_running(deployment)
    shown = as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]
    assert shown["endpoints"] == [{
        "type": "https", "name": "http", "url": f"https://{deployment.endpoint_label}.gantry.localhost", "port": 443,
        "internal_port": 11434, "access": "private", "ready": True,
    }]
    assert replica.node.public_address not in str(shown)
    (listed,) = as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"]
    assert listed["endpoint"] == f"http://{replica.node.public_address}:{replica.host_port}"
    assert "10.88.0.2" not in str(shown) + str(listed)  # the VM's internal address is never shown


def test_the_url_carries_the_gateways_port_unless_it_is_443(as_alice, acme, settings):
    settings.GANTRY_ENDPOINT_DOMAIN, settings.GANTRY_GATEWAY_HTTPS_PORT = "apps.example.com", 8443
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public")
    (endpoint,) = as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]["endpoints"]
    assert endpoint["url"] == f"https://{deployment.endpoint_label}.apps.example.com:8443"
    assert (endpoint["port"], endpoint["access"], endpoint["ready"]) == (8443, "public", False)


def test_an_endpoint_is_ready_only_while_a_replica_is_in_the_gateways_pool(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=8080, replica_count=2)
    first, second = place_running(deployment)

    def ready():
        return as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]["endpoints"][0]["ready"]

    report(first, "running", host_port=first.host_port, health="failing")
    assert ready() is True
    report(second, "running", host_port=second.host_port, health="failing")
    assert ready() is False  # both running, neither passing its check
    report(second, "running", host_port=second.host_port)
    assert ready() is True


def test_a_deployment_without_a_traffic_port_has_no_endpoint(as_alice, acme):
    deployment = deployment_for(acme)
    place_running(deployment)
    assert as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]["endpoints"] == []


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
