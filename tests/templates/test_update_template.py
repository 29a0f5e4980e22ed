from tests.conftest import client_for
from tests.templates.factories import TemplateFactory


def test_it_changes_a_private_template(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme, image="acme/a:1")
    response = as_alice.patch(f"/api/v1/templates/{template.slug}", {"image": "acme/a:2", "default_env": {"X": "1"}}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["template"]["image"] == "acme/a:2"
    template.refresh_from_db()
    assert template.image == "acme/a:2" and template.default_env == {"X": "1"}


def test_it_can_rename_the_slug(as_alice, acme):
    template = TemplateFactory(slug="old", tenant=acme)
    response = as_alice.patch(f"/api/v1/templates/{template.pk}", {"slug": "new"}, format="json")
    assert response.status_code == 200
    assert as_alice.get("/api/v1/templates/new").status_code == 200


def test_renaming_onto_another_template_is_a_409(as_alice, acme):
    TemplateFactory(slug="taken", tenant=acme)
    template = TemplateFactory(slug="mine", tenant=acme)
    response = as_alice.patch(f"/api/v1/templates/{template.pk}", {"slug": "taken"}, format="json")
    assert response.status_code == 409


def test_the_gpu_range_is_checked_against_stored_values(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme, min_gpus=2, max_gpus=4)
    response = as_alice.patch(f"/api/v1/templates/{template.pk}", {"max_gpus": 1}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "min_gpus"


def test_a_global_template_is_read_only(as_alice, db):
    template = TemplateFactory(slug="ollama", image="ollama/ollama:latest")
    response = as_alice.patch("/api/v1/templates/ollama", {"image": "evil/ollama:latest"}, format="json")
    assert response.status_code == 403
    assert "operators" in response.json()["detail"]
    template.refresh_from_db()
    assert template.image == "ollama/ollama:latest"


def test_a_global_template_is_read_only_even_with_a_bad_body(as_alice, db):
    TemplateFactory(slug="ollama")
    assert as_alice.patch("/api/v1/templates/ollama", {"traffic_port": -1}, format="json").status_code == 403


def test_mallory_gets_404_changing_acmes_template(as_mallory, acme):
    template = TemplateFactory(slug="mine", tenant=acme, image="acme/a:1")
    response = as_mallory.patch(f"/api/v1/templates/{template.pk}", {"image": "evil/a:1"}, format="json")
    assert response.status_code == 404
    template.refresh_from_db()
    assert template.image == "acme/a:1"


def test_bad_input_is_a_400(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    response = as_alice.patch(f"/api/v1/templates/{template.pk}", {"traffic_port": 70000}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "traffic_port"


def test_put_is_not_offered(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    assert as_alice.put(f"/api/v1/templates/{template.pk}", {}, format="json").status_code == 405


def test_changing_needs_the_deployments_write_scope(alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    client = client_for(alice, scopes="templates:read", tenant="acme")
    assert client.patch(f"/api/v1/templates/{template.pk}", {"name": "x"}, format="json").status_code == 403
