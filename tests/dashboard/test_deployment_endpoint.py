"""Issue 25 on the deployment page: the endpoint's URL with a copy button, its access switch,
its keys (made with the secret shown once, listed by prefix, revoked) through the API's
services, and the gateways' request metrics for the last hour. Writes are CSRF-checked POSTs;
another tenant's deployment is a 404 everywhere."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.test import Client

from cloud.deployments.models import LATENCY_BUCKETS, EndpointKey, Event, Gateway, RequestMinute
from cloud.deployments.services import endpoint_key_create
from tests.dashboard.conftest import browser_for
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"gk_[A-Za-z0-9_-]{43}")


@pytest.fixture
def web(acme, h100):
    deployment = deployment_for(acme, name="web", traffic_port=8080)
    place_running(deployment)
    return deployment


def page(client, deployment) -> str:
    response = client.get(f"/deployments/{deployment.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def make_key(client, deployment, name: str = "ci"):
    return client.post(f"/deployments/{deployment.pk}/keys/", {"name": name})


def live_keys(deployment) -> list[EndpointKey]:
    return list(EndpointKey.objects.filter(deployment=deployment, revoked_at__isnull=True))


# -- the endpoint ---------------------------------------------------------------------------------


def test_the_endpoint_url_has_a_copy_button_with_its_access_and_readiness(alice_browser, web):
    body = page(alice_browser, web)
    url = f"https://{web.endpoint_label}.gantry.localhost"
    assert f'data-copy="{url}"' in body and f'href="{url}"' in body
    assert "private: callers send an endpoint key in the Gantry-Key header" in body and "serving" in body
    # The poll's partial keeps the button.
    live = alice_browser.get(f"/deployments/{web.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert f'data-copy="{url}"' in live and "<html" not in live


def test_a_deployment_without_an_endpoint_has_no_keys_or_metrics_section(alice_browser, acme, h100):
    bare = deployment_for(acme, name="batch")
    body = page(alice_browser, bare)
    assert 'id="endpoint-keys"' not in body and "Requests in the last hour" not in body


# -- keys -----------------------------------------------------------------------------------------


def test_a_key_made_on_the_page_shows_its_secret_once(alice_browser, alice, web):
    response = make_key(alice_browser, web, "laptop")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    (secret,) = set(SECRET.findall(body))
    (key,) = live_keys(web)
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()  # the service's key, not another
    assert key.name == "laptop" and key.prefix == secret[:11] and key.created_by == alice
    assert "It is not shown again" in body and f'data-copy="{secret}"' in body
    assert Event.objects.filter(deployment=web, type="endpoint_key.created").exists()

    again = page(alice_browser, web)
    assert secret not in again and not SECRET.search(again)
    assert "laptop" in again and f"{key.prefix}…" in again


def test_keys_are_listed_by_name_prefix_and_creation(alice_browser, web):
    made = [endpoint_key_create(tenant=web.tenant, actor=None, deployment_id=web.pk, name=name) for name in ("a", "b")]
    body = page(alice_browser, web)
    rows = re.findall(r'<tr data-testid="endpoint-key">(.*?)</tr>', body, re.S)
    assert len(rows) == 2
    for row, key in zip(rows, made):
        assert f"<td>{key.key.name}</td>" in row and key.key.prefix in row
        assert key.key.created_at.strftime("%Y-%m-%d %H:%M") in row
        assert key.secret not in row


def test_a_revoked_key_leaves_the_list(alice_browser, web):
    made = endpoint_key_create(tenant=web.tenant, actor=None, deployment_id=web.pk, name="old")
    response = alice_browser.post(f"/deployments/{web.pk}/keys/{made.key.pk}/revoke/", follow=True)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Revoked the key old" in body and 'data-testid="endpoint-key"' not in body
    made.key.refresh_from_db()
    assert made.key.revoked_at is not None
    assert alice_browser.post(f"/deployments/{web.pk}/keys/{made.key.pk}/revoke/").status_code == 404
    assert alice_browser.post(f"/deployments/{web.pk}/keys/not-a-uuid/revoke/").status_code == 404


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there"])
def test_a_bad_name_makes_no_key_and_says_why(alice_browser, web, name):
    response = make_key(alice_browser, web, name)
    assert response.status_code == 302 and response["Location"].endswith("#endpoint-keys")
    assert not live_keys(web)
    assert "A key&#x27;s name" in page(alice_browser, web)


def test_the_twenty_first_key_is_refused_with_the_services_reason(alice_browser, web):
    for n in range(20):
        endpoint_key_create(tenant=web.tenant, actor=None, deployment_id=web.pk, name=f"k{n}")
    assert make_key(alice_browser, web).status_code == 302
    assert len(live_keys(web)) == 20 and "at most 20 live endpoint keys" in page(alice_browser, web)


def test_a_key_name_is_text_on_the_page(alice_browser, web):
    make_key(alice_browser, web, '<img src=x onerror="alert(1)">')
    body = page(alice_browser, web)
    assert "<img src=x" not in body and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body


def test_a_member_manages_keys_as_they_manage_deployments(bob_browser, web):
    assert make_key(bob_browser, web).status_code == 200 and len(live_keys(web)) == 1


def test_writes_are_posts_with_the_csrf_token(alice, web):
    made = endpoint_key_create(tenant=web.tenant, actor=None, deployment_id=web.pk, name="kept")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    assert strict.post(f"/deployments/{web.pk}/keys/", {"name": "forged"}).status_code == 403
    assert strict.post(f"/deployments/{web.pk}/keys/{made.key.pk}/revoke/").status_code == 403
    assert strict.post(f"/deployments/{web.pk}/access/", {"endpoint_access": "public"}).status_code == 403
    assert [k.name for k in live_keys(web)] == ["kept"]
    assert browser_for(alice).get(f"/deployments/{web.pk}/keys/").status_code == 405
    assert browser_for(alice).get(f"/deployments/{web.pk}/keys/{made.key.pk}/revoke/").status_code == 405
    web.refresh_from_db()
    assert web.endpoint_access == "private"


# -- access ---------------------------------------------------------------------------------------


def test_the_access_switch_goes_through_the_update_service(alice_browser, web):
    assert 'value="private" checked' in page(alice_browser, web)
    response = alice_browser.post(f"/deployments/{web.pk}/access/", {"endpoint_access": "public"}, follow=True)
    body = response.content.decode()
    assert "The endpoint is public" in body and 'value="public" checked' in body
    web.refresh_from_db()
    assert web.endpoint_access == "public"
    updated = Event.objects.filter(deployment=web, type="deployment.updated").latest("id")
    assert updated.payload["fields"] == ["endpoint_access"]

    alice_browser.post(f"/deployments/{web.pk}/access/", {"endpoint_access": "private"})
    web.refresh_from_db()
    assert web.endpoint_access == "private"


@pytest.mark.parametrize("value", ["", "open", "PUBLIC", None])
def test_an_unknown_access_changes_nothing(alice_browser, web, value):
    response = alice_browser.post(f"/deployments/{web.pk}/access/", {} if value is None else {"endpoint_access": value},
                                  follow=True)
    assert "private or public" in response.content.decode()
    web.refresh_from_db()
    assert web.endpoint_access == "private"


# -- another tenant -------------------------------------------------------------------------------


def test_another_tenants_deployment_is_a_404_for_every_part(mallory_browser, mallory, evil, web, h100):
    made = endpoint_key_create(tenant=web.tenant, actor=None, deployment_id=web.pk, name="theirs")
    for response in (
        mallory_browser.get(f"/deployments/{web.pk}/"),
        mallory_browser.get(f"/deployments/{web.pk}/requests/"),
        make_key(mallory_browser, web),
        mallory_browser.post(f"/deployments/{web.pk}/keys/{made.key.pk}/revoke/"),
        mallory_browser.post(f"/deployments/{web.pk}/access/", {"endpoint_access": "public"}),
    ):
        assert response.status_code == 404
        assert "theirs" not in response.content.decode()
    # Through mallory's own deployment, with alice's key's id: not found either.
    own = deployment_for(evil, name="own", traffic_port=8080)
    assert mallory_browser.post(f"/deployments/{own.pk}/keys/{made.key.pk}/revoke/").status_code == 404
    assert [k.name for k in live_keys(web)] == ["theirs"]
    web.refresh_from_db()
    assert web.endpoint_access == "private"


# -- request metrics ------------------------------------------------------------------------------


def count(deployment, minutes_ago: int, requests: int, errors: int, gateway: str = "gw-a", **buckets):
    row, _ = Gateway.objects.get_or_create(name=gateway, defaults={"control_url": "http://127.0.0.1:9",
                                                                   "token_encrypted": "x"})
    histogram = {bucket: 0 for bucket in LATENCY_BUCKETS}
    for name, n in buckets.items():
        histogram[name.removeprefix("b")] = n
    now = datetime.now(dt_timezone.utc)
    RequestMinute.objects.create(gateway=row, deployment=deployment, requests=requests, errors=errors,
                                 minute=now.replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago),
                                 latency_ms=histogram, collected_at=now)


def test_the_page_shows_the_last_hours_requests_with_a_chart(alice_browser, web):
    count(web, 3, 150, 3, b10=150)
    count(web, 3, 50, 1, gateway="gw-b", b100=50)
    count(web, 20, 0, 0)
    body = page(alice_browser, web)
    assert re.search(r'data-testid="requests-count">200<', body)
    assert re.search(r'data-testid="requests-error-rate">2.00%<', body)
    # 200 timed: 150 in (5, 10], 50 in (50, 100]. p50: the 100th, 2/3 through (5, 10]; p99: the
    # 198th, 48/50 through (50, 100].
    assert re.search(r'data-testid="requests-latency">8.3 / 98 ms<', body)
    chart = re.search(r'<svg viewBox="0 0 720 220" class="chart" role="img" aria-label="Requests per minute.*?</svg>',
                      body, re.S).group(0)
    assert chart.count('class="bar"') == 1 and chart.count('class="err"') == 1
    assert "200 requests, 4 errors</title>" in chart


def test_without_requests_the_page_says_so(alice_browser, web):
    count(web, 90, 10, 10, inf=10)  # before the hour
    body = page(alice_browser, web)
    assert 'data-testid="requests-none"' in body and re.search(r'data-testid="requests-count">0<', body)
    assert re.search(r'data-testid="requests-error-rate">—<', body) and "Requests per minute" not in body


def test_the_metrics_poll_returns_just_that_part(alice_browser, web):
    count(web, 1, 7, 0, b2=7)
    response = alice_browser.get(f"/deployments/{web.pk}/requests/", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    assert re.search(r'data-testid="requests-count">7<', body)
    assert alice_browser.post(f"/deployments/{web.pk}/requests/").status_code == 405
