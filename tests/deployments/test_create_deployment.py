from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, Replica
from tests.deployments.conftest import URL
from tests.deployments.factories import NodeFactory, TemplateFactory
from tests.factories import HardwareTypeFactory, LocationFactory

pytestmark = pytest.mark.django_db


def test_it_creates_a_pending_deployment_from_an_image(as_alice, body, h100):
    response = as_alice.post(URL, body(replica_count=2, gpus_per_container=2, duration_hours=3), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["estimated_hourly_cost"] == "10.000000"  # 2.50 x 2 GPUs x 2 replicas
    dep = data["deployment"]
    assert dep["status"] == "pending" and dep["image"] == "ghcr.io/acme/app:1.0" and dep["template_id"] is None
    assert dep["hardware_id"] == h100.id and dep["gpus_per_container"] == 2 and dep["replica_count"] == 2
    assert dep["ready_replicas"] == 0 and dep["endpoints"] == [] and dep["total_cost"] == "0.000000"
    assert dep["name"].startswith("app-")
    for key in ("id", "name", "status", "template_id", "image", "gpus_per_container", "hardware_id", "location_ids",
                "replica_count", "ready_replicas", "endpoints", "env", "total_cost", "created_at", "started_at", "expires_at"):
        assert key in dep

    deployment = Deployment.objects.get(pk=dep["id"])
    assert deployment.price_per_gpu_hour == Decimal("2.5000")
    assert abs(deployment.expires_at - (timezone.now() + timedelta(hours=3))) < timedelta(minutes=1)
    replicas = list(deployment.replicas.order_by("ordinal"))
    assert [r.ordinal for r in replicas] == [0, 1]
    assert all(r.state == Replica.State.PENDING and "scheduler" in r.reason for r in replicas)
    assert Event.objects.filter(deployment=deployment, type="deployment.created").count() == 1


def test_it_fills_defaults_from_the_template_and_merges_env(as_alice, h100, ollama):
    response = as_alice.post(URL, {"name": "my-ollama", "template_id": "ollama", "env": {"OLLAMA_MODELS": "llama2"}},
                             format="json")
    assert response.status_code == 201, response.json()
    dep = response.json()["deployment"]
    assert dep["template_id"] == "ollama" and dep["image"] == "ollama/ollama:0.3.12"
    assert dep["env"] == {"OLLAMA_HOST": "0.0.0.0", "OLLAMA_MODELS": "llama2"}
    assert dep["entrypoint"] == ["/bin/ollama"] and dep["args"] == ["serve"] and dep["traffic_port"] == 11434
    assert dep["gpus_per_container"] == 1 and dep["hardware_id"] == h100.id


def test_request_env_overrides_template_defaults(as_alice, h100, ollama):
    response = as_alice.post(URL, {"template_id": "ollama", "env": {"OLLAMA_HOST": "127.0.0.1"}}, format="json")
    assert response.json()["deployment"]["env"] == {"OLLAMA_HOST": "127.0.0.1"}


def test_it_accepts_neuranet_camel_case_fields(as_alice, h100, ollama):
    node = NodeFactory(hardware_type=h100)
    response = as_alice.post(URL, {"templateId": "ollama", "nodeId": node.id, "name": "n1"}, format="json")
    assert response.status_code == 201, response.json()
    dep = response.json()["deployment"]
    assert dep["template_id"] == "ollama" and dep["node_id"] == node.id and dep["hardware_id"] == h100.id


def test_it_accepts_custom_image_and_resource_private_name(as_alice, h100):
    response = as_alice.post(URL, {"customImage": "nginx", "resource_private_name": "web", "hardware_id": h100.id,
                                   "env_variables": {"A": "b"}}, format="json")
    assert response.status_code == 201, response.json()
    dep = response.json()["deployment"]
    assert dep["name"] == "web" and dep["image"] == "nginx" and dep["env"] == {"A": "b"}


def test_null_aliases_are_ignored(as_alice, h100, ollama):
    response = as_alice.post(URL, {"templateId": "ollama", "customImage": None}, format="json")
    assert response.status_code == 201, response.json()


def test_a_private_template_wins_over_the_global_one(as_alice, acme, h100, ollama):
    TemplateFactory(tenant=acme, slug="ollama", image="registry.acme.test/ollama:patched")
    response = as_alice.post(URL, {"template_id": "ollama"}, format="json")
    assert response.json()["deployment"]["image"] == "registry.acme.test/ollama:patched"


def test_another_tenants_private_template_is_unknown(as_alice, evil, h100):
    TemplateFactory(tenant=evil, slug="secret-sauce")
    response = as_alice.post(URL, {"template_id": "secret-sauce"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "template_id"


def test_without_hardware_it_picks_the_cheapest_type_offering_the_gpu_count(as_alice, ollama):
    HardwareTypeFactory(slug="pricey", price_per_gpu_hour=Decimal("9"), allowed_gpu_counts=[1, 2])
    cheap = HardwareTypeFactory(slug="cheap", price_per_gpu_hour=Decimal("1"), allowed_gpu_counts=[2, 4])
    HardwareTypeFactory(slug="cheapest-no-2", price_per_gpu_hour=Decimal("0.5"), allowed_gpu_counts=[8])
    response = as_alice.post(URL, {"template_id": "ollama", "gpus_per_container": 2}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["deployment"]["hardware_id"] == cheap.id


def test_locations_are_stored(as_alice, body):
    first, second = LocationFactory(slug="eu-west"), LocationFactory(slug="us-west")
    response = as_alice.post(URL, body(location_ids=[second.id, first.id, second.id]), format="json")
    assert response.status_code == 201
    assert response.json()["deployment"]["location_ids"] == sorted([first.id, second.id])


def test_a_pinned_node_must_match_hardware_and_location(as_alice, body, h100):
    other_hw_node = NodeFactory()
    response = as_alice.post(URL, body(node_id=other_hw_node.id), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "node_id"
    node = NodeFactory(hardware_type=h100)
    elsewhere = LocationFactory(slug="elsewhere")
    response = as_alice.post(URL, body(node_id=node.id, location_ids=[elsewhere.id]), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "node_id"


def test_a_name_already_used_by_the_tenant_is_a_conflict(as_alice, body):
    assert as_alice.post(URL, body(name="web"), format="json").status_code == 201
    response = as_alice.post(URL, body(name="web"), format="json")
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"


def test_another_tenant_may_use_the_same_name(as_alice, as_mallory, body):
    assert as_alice.post(URL, body(name="web"), format="json").status_code == 201
    assert as_mallory.post(URL, body(name="web"), format="json").status_code == 201


def test_generated_names_are_unique(as_alice, body):
    names = {as_alice.post(URL, body(), format="json").json()["deployment"]["name"] for _ in range(3)}
    assert len(names) == 3


def test_anonymous_gets_401(anonymous, body):
    response = anonymous.post(URL, body(), format="json")
    assert response.status_code == 401


def test_a_read_only_token_gets_403(as_alice_readonly, body):
    response = as_alice_readonly.post(URL, body(), format="json")
    assert response.status_code == 403
    assert Deployment.objects.count() == 0


def test_bob_a_member_can_create_for_acme(as_bob, acme, body):
    response = as_bob.post(URL, body(), format="json")
    assert response.status_code == 201
    assert Deployment.objects.get().tenant == acme


def test_the_health_check_path_is_the_templates_or_the_customers_and_travels_to_the_node(as_alice, h100, body):
    from cloud.deployments.services.agents import replica_spec

    TemplateFactory(slug="ollama", image="ollama/ollama:0.3.12", traffic_port=11434, health_check_path="/api/version",
                    min_gpus=1, max_gpus=8)
    made = as_alice.post(URL, {"template_id": "ollama", "name": "t"}, format="json").json()["deployment"]
    assert made["health_check_path"] == "/api/version"
    own = as_alice.post(URL, body(traffic_port=8000, health_check_path="/health?full=1"), format="json")
    assert own.status_code == 201, own.json()
    plain = as_alice.post(URL, body(name="plain", traffic_port=8000), format="json").json()["deployment"]
    assert plain["health_check_path"] == ""  # a customer's image without one: a TCP connect
    replicas = {d: Replica.objects.get(deployment_id=d) for d in (made["id"], own.json()["deployment"]["id"], plain["id"])}
    assert [replica_spec(r, gpu_bdfs=[]).health_path for r in replicas.values()] == ["/api/version", "/health?full=1", None]


@pytest.mark.parametrize("path", ["health", "/a b", "/x\r\nHost: evil", "/" + "a" * 256, "/é"])
def test_a_health_check_path_that_could_bend_the_request_line_is_a_400(as_alice, h100, body, path):
    response = as_alice.post(URL, body(traffic_port=8000, health_check_path=path), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "health_check_path", response.json()
