"""Secret env values and registry secrets: encrypted at rest, never in a response or the admin."""

import pytest
from django.db import connection

from cloud.deployments.models import Deployment
from tests.deployments.conftest import URL
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SECRET = "sk-live-VERY-SECRET-0123456789"
REGISTRY = "ghp_REGISTRY_PASSWORD_987654"


@pytest.fixture
def created(as_alice, body):
    response = as_alice.post(URL, body(secret_env_variables={"API_KEY": SECRET}, registry_username="robot",
                                       registry_secret=REGISTRY), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 201
    return response


def assert_clean(response):
    text = response.content.decode()
    assert SECRET not in text and REGISTRY not in text


def test_the_raw_columns_hold_no_plaintext(created):
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_env_encrypted, registry_secret_encrypted, env::text FROM deployments_deployment")
        row = " ".join(cursor.fetchone())
        cursor.execute("SELECT response::text, fingerprint FROM deployments_idempotencykey")
        row += " ".join(cursor.fetchone())
    assert SECRET not in row and REGISTRY not in row
    deployment = Deployment.objects.get()
    assert deployment.get_secret_env() == {"API_KEY": SECRET}
    assert deployment.get_registry_secret() == REGISTRY


def test_no_api_response_carries_a_secret(as_alice, created, body):
    assert_clean(created)
    dep = created.json()["deployment"]
    assert dep["secret_env_keys"] == ["API_KEY"] and dep["registry_username"] == "robot"
    assert "API_KEY" not in dep["env"] and "registry_secret" not in dep
    for path in ("", "/replicas", "/logs", "/events"):
        assert_clean(as_alice.get(f"{URL}/{dep['id']}{path}"))
    assert_clean(as_alice.get(URL))
    assert_clean(as_alice.patch(f"{URL}/{dep['id']}", {"replica_count": 2}, format="json"))
    replay = as_alice.post(URL, body(secret_env_variables={"API_KEY": SECRET}, registry_username="robot",
                                     registry_secret=REGISTRY), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert replay.status_code == 201
    assert_clean(replay)
    assert_clean(as_alice.post(f"{URL}/{dep['id']}/stop"))


def test_the_admin_never_shows_a_secret(client, created):
    admin = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(admin)
    dep_id = created.json()["deployment"]["id"]
    for url in (f"/admin/deployments/deployment/{dep_id}/change/", "/admin/deployments/deployment/",
                "/admin/deployments/idempotencykey/", "/admin/deployments/event/"):
        response = client.get(url)
        assert response.status_code == 200, url
        text = response.content.decode()
        assert SECRET not in text and REGISTRY not in text
    change_page = client.get(f"/admin/deployments/deployment/{dep_id}/change/").content.decode()
    assert "API_KEY" in change_page  # the names are shown
    assert Deployment.objects.get().secret_env_encrypted[:20] not in change_page


def test_the_admin_search_by_id_works_and_bad_ids_do_not_crash(client, created):
    admin = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(admin)
    dep_id = created.json()["deployment"]["id"]
    assert dep_id in client.get("/admin/deployments/deployment/", {"q": dep_id}).content.decode()
    assert client.get("/admin/deployments/deployment/", {"q": "not-a-uuid"}).status_code == 200
