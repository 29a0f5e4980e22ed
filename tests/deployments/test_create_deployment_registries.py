"""POST /deployments refuses images on registries a node must not be sent to (issue 15): a
400 naming the field the customer used, unless the operator trusts the registry."""

import pytest

from cloud.deployments.models import Deployment
from tests.deployments.conftest import URL

pytestmark = pytest.mark.django_db

REFUSED = [
    ("localhost:5000/app:1", "loopback name"),
    ("localhost/app", "loopback name"),
    ("127.0.0.1:6379/app", "loopback address"),
    ("127.1:5000/app", "loopback address"),  # inet_aton shorthand for 127.0.0.1
    ("10.0.0.5/team/app", "private address"),
    ("10.1.2.3:5000/team/app", "private address"),
    ("169.254.169.254/latest/meta-data", "link-local address"),
    ("[::1]:5000/app", "loopback address"),
    ("[::ffff:10.0.0.1]:5000/app", "private address"),
    ("registry.loopback.test:5000/app", "resolves to 127.0.0.1, a loopback address"),
]


@pytest.fixture(autouse=True)
def _names(fake_dns):
    fake_dns["registry.loopback.test"] = ["127.0.0.1"]
    fake_dns["registry.public.test"] = ["93.184.215.14"]


@pytest.mark.parametrize(("image", "reason"), REFUSED)
@pytest.mark.parametrize("field", ["image_url", "custom_image", "customImage"])
def test_a_special_registry_is_a_400_naming_the_field_used(as_alice, body, field, image, reason):
    data = body(image_url=...)
    data[field] = image
    response = as_alice.post(URL, data, format="json")

    assert response.status_code == 400, response.json()
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert reason in error["message"] and "GANTRY_TRUSTED_REGISTRIES" in error["message"]
    assert Deployment.objects.count() == 0


@pytest.mark.parametrize("image", [
    "127.0.0.1:5000/gantry/hello:latest",  # the trusted local registry (tests/conftest.py)
    "registry.public.test/app:1",  # resolves to a public address
    "registry.unknown.test/app:1",  # resolves to nothing here: the node decides at pull time
    "ghcr.io/acme/app:1.0", "nginx", "93.184.215.14/app",
])
def test_public_and_trusted_registries_are_accepted(as_alice, body, image):
    response = as_alice.post(URL, body(image_url=image), format="json")
    assert response.status_code == 201, response.json()


def test_trust_names_one_port_or_every_port(as_alice, body, settings):
    settings.GANTRY_TRUSTED_REGISTRIES = ["10.0.0.5:5000", "registry.loopback.test"]
    assert as_alice.post(URL, body(image_url="10.0.0.5:5000/app", name="a"), format="json").status_code == 201
    assert as_alice.post(URL, body(image_url="10.0.0.5:5001/app", name="b"), format="json").status_code == 400
    assert as_alice.post(URL, body(image_url="registry.loopback.test:1/app", name="c"), format="json").status_code == 201


def test_without_trust_even_the_local_registry_is_refused(as_alice, body, settings):
    settings.GANTRY_TRUSTED_REGISTRIES = []
    response = as_alice.post(URL, body(image_url="127.0.0.1:5000/gantry/hello"), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "image_url"
