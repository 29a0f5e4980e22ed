import pytest

from templates.models import Template
from tests.conftest import client_for
from tests.templates.factories import TemplateFactory

VALID = {
    "slug": "my-llm",
    "name": "My LLM",
    "image": "ghcr.io/acme/llm:1.2",
    "default_env": {"MODEL": "llama3"},
    "args": ["--port", "9000"],
    "traffic_port": 9000,
    "min_gpus": 1,
    "max_gpus": 4,
    "health_check_path": "/health",
}


def test_it_creates_a_private_template(as_alice, acme):
    response = as_alice.post("/api/v1/templates", VALID, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()["template"]
    assert body["visibility"] == "private" and body["image"] == "ghcr.io/acme/llm:1.2" and body["args"] == ["--port", "9000"]
    template = Template.objects.get(pk=body["id"])
    assert template.tenant == acme


def test_the_new_template_is_invisible_to_mallory(as_alice, as_mallory, acme):
    template_id = as_alice.post("/api/v1/templates", VALID, format="json").json()["template"]["id"]
    assert as_mallory.get(f"/api/v1/templates/{template_id}").status_code == 404
    assert as_mallory.get("/api/v1/templates/my-llm").status_code == 404


def test_two_tenants_may_use_the_same_slug(as_alice, as_mallory, acme, evil):
    assert as_alice.post("/api/v1/templates", VALID, format="json").status_code == 201
    assert as_mallory.post("/api/v1/templates", VALID, format="json").status_code == 201


def test_a_duplicate_slug_in_the_tenant_is_a_409(as_alice, acme):
    as_alice.post("/api/v1/templates", VALID, format="json")
    response = as_alice.post("/api/v1/templates", VALID, format="json")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "slug"


def test_the_slug_of_a_global_template_is_refused(as_alice, acme):
    TemplateFactory(slug="ollama")
    response = as_alice.post("/api/v1/templates", {**VALID, "slug": "ollama"}, format="json")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "slug"


@pytest.mark.parametrize("field,value", [
    ("slug", "Not A Slug"),
    ("slug", "-dash"),
    ("slug", ""),
    ("image", "Not/Valid"),
    ("image", "ubuntu:"),
    ("image", "has space:1"),
    ("image", "http://registry/x"),
    ("image", 42),
    ("traffic_port", 0),
    ("traffic_port", 65536),
    ("traffic_port", "http"),
    ("min_gpus", -1),
    ("max_gpus", 9),
    ("max_gpus", 10**12),
    ("default_env", {"1BAD": "x"}),
    ("default_env", {"GOOD": 1}),
    ("default_env", ["A=1"]),
    ("entrypoint", "python app.py"),
    ("args", [1, {"a": 2}]),
    ("health_check_path", "health"),
    ("name", ""),
    ("name", "x" * 101),
])
def test_bad_input_is_a_400_naming_the_field(as_alice, acme, field, value):
    response = as_alice.post("/api/v1/templates", {**VALID, field: value}, format="json")
    assert response.status_code == 400, response.json()
    assert response["Content-Type"] == "application/problem+json"
    fields = {e["field"].split(".")[0] for e in response.json()["errors"]}
    assert fields == {field}


def test_min_gpus_above_max_gpus_is_a_400(as_alice, acme):
    response = as_alice.post("/api/v1/templates", {**VALID, "min_gpus": 4, "max_gpus": 2}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "min_gpus"


@pytest.mark.parametrize("missing", ["slug", "name", "image"])
def test_required_fields_are_named(as_alice, acme, missing):
    body = {k: v for k, v in VALID.items() if k != missing}
    response = as_alice.post("/api/v1/templates", body, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [missing]


def test_malformed_json_is_a_400(as_alice, acme):
    response = as_alice.post("/api/v1/templates", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


def test_a_json_array_body_is_a_400(as_alice, acme):
    response = as_alice.post("/api/v1/templates", [VALID], format="json")
    assert response.status_code == 400


def test_creating_needs_the_deployments_write_scope(alice):
    client = client_for(alice, scopes="templates:read deployments:read", tenant="acme")
    response = client.post("/api/v1/templates", VALID, format="json")
    assert response.status_code == 403
    assert "deployments:write" in response.json()["detail"]
    assert not Template.objects.exists()


def test_the_number_of_private_templates_is_capped(as_alice, acme, monkeypatch):
    from templates import services

    monkeypatch.setattr(services, "MAX_PRIVATE_TEMPLATES", 2)
    TemplateFactory(slug="one", tenant=acme)
    TemplateFactory(slug="two", tenant=acme)
    TemplateFactory(slug="global-does-not-count")
    response = as_alice.post("/api/v1/templates", VALID, format="json")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert not Template.objects.filter(slug="my-llm").exists()
