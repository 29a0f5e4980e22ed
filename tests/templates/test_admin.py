"""Templates in the admin go through templates/services.py: a tenant's template keeps the
customers' rules (its slug is never a global's, the private quota), a global one is the
operators'. A refusal is a form error, not a 500."""

import pytest
from django.urls import reverse

from templates import services
from templates.models import Template
from tests.factories import UserFactory
from tests.templates.factories import TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(UserFactory(username="ops@example.com", is_staff=True, is_superuser=True))
    return client


def _form(**fields) -> dict:
    return {"slug": "mine", "name": "Mine", "description": "", "image": "ollama/ollama:latest", "default_env": "{}",
            "entrypoint": "null", "args": "null", "traffic_port": "11434", "health_check_path": "", "min_gpus": "0",
            "max_gpus": "8", **fields}


def test_a_private_template_may_not_take_a_global_slug(operator, acme):
    TemplateFactory(slug="ollama")
    response = operator.post(reverse("admin:catalog_template_add"), _form(tenant=acme.pk, slug="ollama"))
    assert response.status_code == 200 and b"slug of a global template" in response.content
    assert not Template.objects.filter(tenant=acme).exists()


def test_the_private_quota_holds(operator, acme, monkeypatch):
    monkeypatch.setattr(services, "MAX_PRIVATE_TEMPLATES", 1)
    TemplateFactory(tenant=acme, slug="first")
    response = operator.post(reverse("admin:catalog_template_add"), _form(tenant=acme.pk, slug="second"))
    assert response.status_code == 200 and b"at most 1 private templates" in response.content
    assert Template.objects.filter(tenant=acme).count() == 1


def test_renaming_a_private_template_onto_a_global_slug_is_refused(operator, acme):
    TemplateFactory(slug="ollama")
    mine = TemplateFactory(tenant=acme, slug="mine")
    response = operator.post(reverse("admin:catalog_template_change", args=[mine.pk]), _form(slug="ollama"))
    assert response.status_code == 200 and b"slug of a global template" in response.content
    assert Template.objects.get(pk=mine.pk).slug == "mine"


def test_operators_add_and_change_global_templates(operator):
    response = operator.post(reverse("admin:catalog_template_add"), _form(tenant="", slug="vllm", name="vLLM"))
    assert response.status_code == 302, response.content[:2000]
    made = Template.objects.get(slug="vllm", tenant__isnull=True)
    response = operator.post(reverse("admin:catalog_template_change", args=[made.pk]),
                             _form(slug="vllm", name="vLLM server", min_gpus="9"))
    assert response.status_code == 200 and b"min_gpus must not exceed max_gpus" in response.content
    response = operator.post(reverse("admin:catalog_template_change", args=[made.pk]),
                             _form(slug="vllm", name="vLLM server"))
    assert response.status_code == 302
    assert Template.objects.get(pk=made.pk).name == "vLLM server"
    assert operator.post(reverse("admin:catalog_template_delete", args=[made.pk]), {"post": "yes"}).status_code == 302
    assert not Template.objects.filter(pk=made.pk).exists()
