import pytest

from templates.models import Template
from tests.templates.factories import TemplateFactory


def test_it_gets_a_global_template_by_slug(as_alice, db):
    TemplateFactory(slug="ollama", image="ollama/ollama:latest", traffic_port=11434)
    response = as_alice.get("/api/v1/templates/ollama")
    assert response.status_code == 200
    template = response.json()["template"]
    assert template["slug"] == "ollama" and template["visibility"] == "global" and template["traffic_port"] == 11434


def test_it_gets_a_template_by_id(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    response = as_alice.get(f"/api/v1/templates/{template.pk}")
    assert response.status_code == 200
    assert response.json()["template"]["slug"] == "mine"


def test_mallory_gets_404_for_acmes_template_by_slug_and_by_id(as_mallory, acme):
    template = TemplateFactory(slug="acme-secret-sauce", tenant=acme)
    for ref in ("acme-secret-sauce", template.pk):
        response = as_mallory.get(f"/api/v1/templates/{ref}")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/problem+json"
        assert "acme" not in response.json()["detail"].replace("acme-secret-sauce", "")


def test_an_unknown_template_is_404(as_alice, db):
    assert as_alice.get("/api/v1/templates/nope").status_code == 404
    assert as_alice.get("/api/v1/templates/999999999").status_code == 404


def test_a_private_template_shadows_a_global_one_of_the_same_slug(as_alice, acme):
    # Only possible when an operator adds a global template after a customer made theirs.
    TemplateFactory(slug="llm", image="global/llm:1")
    Template.objects.create(tenant=acme, slug="llm", name="Ours", image="acme/llm:2")
    assert as_alice.get("/api/v1/templates/llm").json()["template"]["image"] == "acme/llm:2"


@pytest.mark.parametrize("ref", ["x" * 300, "%00", "a%2Fb"])
def test_odd_references_are_404_not_500(as_alice, db, ref):
    assert as_alice.get(f"/api/v1/templates/{ref}").status_code == 404
