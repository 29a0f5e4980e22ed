"""A tenant's template is customer input: its image may not name a registry a node must not be
sent to (issue 15), on create or on change; the 400 names `image`."""

import pytest

from tests.templates.factories import TemplateFactory
from tests.templates.test_create_template import VALID

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("image", ["localhost:5000/llm", "127.0.0.1/llm", "10.20.30.40:5000/llm", "169.254.1.1/llm",
                                   "[::1]/llm", "loopback.example.test/llm"])
def test_creating_with_a_special_registry_is_a_400_on_image(as_alice, acme, fake_dns, image):
    fake_dns["loopback.example.test"] = ["::1"]
    response = as_alice.post("/api/v1/templates", {**VALID, "image": image}, format="json")
    assert response.status_code == 400, response.json()
    [error] = response.json()["errors"]
    assert error["field"] == "image" and "GANTRY_TRUSTED_REGISTRIES" in error["message"]


def test_changing_to_a_special_registry_is_a_400_on_image(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme, image="acme/a:1")
    response = as_alice.patch(f"/api/v1/templates/{template.slug}", {"image": "10.0.0.1/a:2"}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "image"
    template.refresh_from_db()
    assert template.image == "acme/a:1"


def test_the_trusted_registry_is_accepted(as_alice, acme):
    response = as_alice.post("/api/v1/templates", {**VALID, "image": "127.0.0.1:5000/gantry/hello"}, format="json")
    assert response.status_code == 201, response.json()
