"""Every bad input to POST /deployments is a 400 problem naming the field."""

import pytest

from cloud.deployments.models import Deployment
from tests.deployments.conftest import URL

pytestmark = pytest.mark.django_db


def fields_of(response) -> set:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    return {e["field"] for e in response.json()["errors"]}


@pytest.mark.parametrize(("field", "value"), [
    ("replica_count", 0), ("replica_count", -1), ("replica_count", 101), ("replica_count", "2"), ("replica_count", 1.5),
    ("replica_count", True),
    ("duration_hours", 0), ("duration_hours", 8761), ("duration_hours", "forever"),
    ("gpus_per_container", -1), ("gpus_per_container", 9), ("gpus_per_container", 10**12),
    ("traffic_port", 0), ("traffic_port", 65536), ("traffic_port", -80), ("traffic_port", "80"),
    ("hardware_id", 0), ("hardware_id", "h100"), ("hardware_id", 999999),
    ("location_ids", "us-east"), ("location_ids", [0]), ("location_ids", [999999]), ("location_ids", ["1"]),
    ("node_id", 999999), ("node_id", "node_abc123"),
    ("entrypoint", "python -m app"), ("entrypoint", [1, 2]), ("args", [None]),
    ("env", {"1BAD": "x"}), ("env", {"BAD-NAME": "x"}), ("env", {"OK": 1}), ("env", ["A=1"]), ("env", {"": "x"}),
    ("env_variables", {"A B": "x"}),
    ("secret_env_variables", {"TOKEN": 123}),
    ("image_url", "UPPER/Case"), ("image_url", "ubuntu:"), ("image_url", "ubuntu@sha256:abc"), ("image_url", "a b"),
    ("image_url", "-bad/image"), ("image_url", 42),
    ("name", "has spaces"), ("name", "-leading-dash"), ("name", "x" * 101), ("name", 7),
    ("registry_username", 5), ("registry_secret", ["x"]),
])
def test_a_bad_value_is_a_400_naming_the_field(as_alice, body, field, value):
    response = as_alice.post(URL, body(**{field: value}), format="json")
    assert any(f == field or f.startswith(field + ".") for f in fields_of(response)), response.json()
    assert Deployment.objects.count() == 0


def test_an_env_error_names_the_variable(as_alice, body):
    response = as_alice.post(URL, body(env={"GOOD": "1", "9LIVES": "x"}), format="json")
    assert fields_of(response) == {"env.9LIVES"}


def test_an_oversized_env_is_refused(as_alice, body):
    response = as_alice.post(URL, body(env={f"V{i}": "x" * 1000 for i in range(70)}), format="json")
    assert fields_of(response) == {"env"}


def test_an_unknown_field_is_named(as_alice, body):
    assert fields_of(as_alice.post(URL, body(gpu_count=1), format="json")) == {"gpu_count"}


def test_an_unknown_template_is_named(as_alice, h100):
    assert fields_of(as_alice.post(URL, {"template_id": "nope"}, format="json")) == {"template_id"}


def test_template_and_image_together_are_refused(as_alice, h100, ollama):
    response = as_alice.post(URL, {"template_id": "ollama", "image_url": "nginx"}, format="json")
    assert fields_of(response) == {"template_id"}


def test_neither_template_nor_image_is_refused(as_alice, h100):
    assert fields_of(as_alice.post(URL, {"hardware_id": h100.id}, format="json")) == {"template_id"}


def test_conflicting_aliases_are_refused(as_alice, body):
    response = as_alice.post(URL, body(name="a", resource_private_name="b"), format="json")
    assert fields_of(response) == {"resource_private_name"}


def test_a_gpu_count_the_hardware_does_not_offer_is_refused(as_alice, body):
    assert fields_of(as_alice.post(URL, body(gpus_per_container=3), format="json")) == {"gpus_per_container"}


def test_a_gpu_count_outside_the_template_range_is_refused(as_alice, h100, ollama):
    ollama.max_gpus = 2
    ollama.save()
    response = as_alice.post(URL, {"template_id": "ollama", "gpus_per_container": 4}, format="json")
    assert fields_of(response) == {"gpus_per_container"}
    assert "2" in response.json()["errors"][0]["message"]


def test_a_name_both_plain_and_secret_is_refused(as_alice, body):
    response = as_alice.post(URL, body(env={"TOKEN": "a"}, secret_env_variables={"TOKEN": "b"}), format="json")
    assert fields_of(response) == {"secret_env_variables"}


def test_malformed_json_is_a_400(as_alice):
    response = as_alice.post(URL, data="{not json", content_type="application/json")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"


def test_a_json_array_body_is_a_400(as_alice):
    response = as_alice.post(URL, data="[1, 2]", content_type="application/json")
    assert response.status_code == 400


def test_a_bad_idempotency_key_is_named(as_alice, body):
    response = as_alice.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="x" * 256)
    assert fields_of(response) == {"Idempotency-Key"}
