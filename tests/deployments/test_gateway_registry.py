"""Issue 25: registering gateways (`manage.py gateway_register`, the admin), their token kept
encrypted, and what `GET /api/v1/system/status` says of them."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from cloud.deployments.models import Gateway
from cloud.deployments.routes import route_table
from cloud.deployments.services import gateway_register, routes_push
from tests.deployments import standin_gateway
from tests.deployments.factories import deployment_for
from tests.factories import UserFactory, issue_token

pytestmark = pytest.mark.django_db

TOKEN = "a-long-random-gateway-token-0123456789"


@pytest.fixture
def token_file(tmp_path):
    def write(content: str | bytes = TOKEN + "\n"):
        path = tmp_path / "token"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)
    return write


def register(*args) -> dict:
    out = io.StringIO()
    call_command("gateway_register", *args, stdout=out)
    return json.loads(out.getvalue())


def test_the_command_registers_a_gateway_with_its_token_encrypted(token_file):
    made = register("gw-1", "--url", "http://198.51.100.10:9180/", "--token-file", token_file())
    assert made == {"name": "gw-1", "control_url": "http://198.51.100.10:9180", "created": True}
    gateway = Gateway.objects.get(name="gw-1")
    assert gateway.get_token() == TOKEN  # the file's trailing newline is not part of it
    with connection.cursor() as cursor:
        cursor.execute("SELECT token_encrypted FROM deployments_gateway")
        (stored,) = cursor.fetchone()
    assert TOKEN not in stored


def test_registering_again_updates_the_url_and_token_and_forgets_what_the_old_address_took(token_file):
    register("gw-1", "--url", "http://198.51.100.10:9180", "--token-file", token_file())
    Gateway.objects.filter(name="gw-1").update(last_digest="a" * 64, last_error="x")
    made = register("gw-1", "--url", "https://gw.example.net:9443", "--token-file", token_file("a-new-token-0123456789abc"))
    assert made["created"] is False
    gateway = Gateway.objects.get(name="gw-1")
    assert (gateway.control_url, gateway.get_token()) == ("https://gw.example.net:9443", "a-new-token-0123456789abc")
    assert (gateway.last_digest, gateway.last_error) == ("", "")
    assert Gateway.objects.count() == 1


@pytest.mark.parametrize(("args", "why"), [
    (["GW 1", "--url", "http://198.51.100.10:9180"], "name"),
    (["-gw", "--url", "http://198.51.100.10:9180"], "name"),
    (["gw-1", "--url", "ftp://198.51.100.10"], "http(s)"),
    (["gw-1", "--url", "http://"], "http(s)"),
    (["gw-1", "--url", "http://user:pw@198.51.100.10:9180"], "credentials"),
    (["gw-1", "--url", "http://198.51.100.10:9180/?x=1"], "query"),
    (["gw-1", "--url", "http://198.51.100.10:99999"], "port"),
    (["gw-1", "--url", "http://" + "a" * 300], "300"),
])
def test_a_bad_name_or_url_is_refused(token_file, args, why):
    with pytest.raises(CommandError, match=why.replace("(", r"\(").replace(")", r"\)")):
        register(*args, "--token-file", token_file())
    assert not Gateway.objects.exists()


@pytest.mark.parametrize("content", ["", "short", "has a space in it 0123456789", "x" * 5000, b"\xff\xfe" * 10,
                                     "ümlaut-token-0123456789"])
def test_a_bad_token_is_refused(token_file, content):
    with pytest.raises(CommandError):
        register("gw-1", "--url", "http://198.51.100.10:9180", "--token-file", token_file(content))
    assert not Gateway.objects.exists()


def test_a_missing_token_file_is_refused(tmp_path):
    with pytest.raises(CommandError, match="Cannot read the token file"):
        register("gw-1", "--url", "http://198.51.100.10:9180", "--token-file", str(tmp_path / "absent"))


# -- the admin --------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(username="ops@example.com", is_staff=True, is_superuser=True))
    return client


def test_the_admin_registers_through_the_service_and_never_shows_the_token(admin_client):
    response = admin_client.post("/admin/deployments/gateway/add/", {
        "name": "gw-2", "control_url": "http://198.51.100.11:9180", "token": TOKEN})
    assert response.status_code == 302, response.content.decode()[:2000]
    gateway = Gateway.objects.get(name="gw-2")
    assert gateway.get_token() == TOKEN

    page = admin_client.get(f"/admin/deployments/gateway/{gateway.pk}/change/").content.decode()
    assert TOKEN not in page and gateway.token_encrypted not in page
    # An empty token keeps the current one; a new URL is taken.
    response = admin_client.post(f"/admin/deployments/gateway/{gateway.pk}/change/", {
        "control_url": "http://198.51.100.12:9180", "token": ""})
    assert response.status_code == 302
    gateway.refresh_from_db()
    assert (gateway.control_url, gateway.get_token()) == ("http://198.51.100.12:9180", TOKEN)


def test_the_admin_shows_the_services_refusal_on_the_form(admin_client):
    response = admin_client.post("/admin/deployments/gateway/add/", {
        "name": "gw-3", "control_url": "http://198.51.100.11:9180", "token": "short"})
    assert response.status_code == 200 and "printable ASCII" in response.content.decode()
    response = admin_client.post("/admin/deployments/gateway/add/", {"name": "gw-3", "control_url": "http://x:1"})
    assert response.status_code == 200 and "needs its token" in response.content.decode()
    assert not Gateway.objects.exists()


def test_the_admin_lists_a_deployments_keys_by_prefix_only(admin_client, acme):
    from cloud.deployments.services import endpoint_key_create

    deployment = deployment_for(acme, name="web", traffic_port=8080)
    made = endpoint_key_create(tenant=acme, actor=None, deployment_id=deployment.pk, name="the-ci-key")
    page = admin_client.get(f"/admin/deployments/deployment/{deployment.pk}/change/").content.decode()
    assert "the-ci-key" in page and made.key.prefix in page
    assert made.secret not in page and made.key.secret_hash not in page


# -- system status ----------------------------------------------------------------------------------


@pytest.fixture
def operator():
    client = APIClient()
    user = UserFactory(username="ops@example.com", is_staff=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user=user, scopes='nodes:admin').token}")
    return client


def test_system_status_shows_each_gateway_and_whether_it_serves_the_current_table(operator, acme):
    assert operator.get("/api/v1/system/status").json()["gateways"] == []
    live = standin_gateway.start(TOKEN)
    try:
        gateway_register(name="gw-a", control_url=live.url, token=TOKEN)
        gateway_register(name="gw-b", control_url=live.url, token="the-wrong-token-0123456789")
        routes_push()
        gateways = {g["name"]: g for g in operator.get("/api/v1/system/status").json()["gateways"]}
        assert gateways["gw-a"]["serving_current_table"] is True and gateways["gw-a"]["last_error"] is None
        assert gateways["gw-a"]["control_url"] == live.url
        assert gateways["gw-a"]["last_push_at"] and gateways["gw-a"]["last_success_at"]
        assert gateways["gw-b"]["serving_current_table"] is False
        assert gateways["gw-b"]["last_error"] == "HTTP 401: missing or wrong token"
        assert gateways["gw-b"]["last_success_at"] is None
        assert "token" not in json.dumps(gateways).replace("wrong token", "")

        deployment_for(acme, name="new", traffic_port=8080)  # the table moved on; no push yet
        gateways = {g["name"]: g for g in operator.get("/api/v1/system/status").json()["gateways"]}
        assert gateways["gw-a"]["serving_current_table"] is False
        routes_push()
        assert Gateway.objects.get(name="gw-a").last_digest == route_table().digest()
    finally:
        standin_gateway.stop(live)
