from __future__ import annotations

from oauth2_provider.models import Application

from accounts.models import ServiceAccount


def test_an_owner_creates_a_client_and_sees_its_secret_once(alice_browser, acme):
    response = alice_browser.post("/api-access/", {"name": "ci", "scopes": ["deployments:read", "billing:read"]})
    assert response.status_code == 200
    created = response.context["created"]
    account = ServiceAccount.objects.get(tenant=acme)
    assert account.scopes == "deployments:read billing:read"
    assert created["secret"].encode() in response.content and b"/o/token/" in response.content
    assert "no-store" in response["Cache-Control"]
    assert created["secret"].encode() not in alice_browser.get("/api-access/").content


def test_a_client_needs_a_known_scope(alice_browser, acme):
    response = alice_browser.post("/api-access/", {"name": "ci", "scopes": ["nodes:admin"]}, follow=True)
    assert not ServiceAccount.objects.filter(tenant=acme).exists()
    assert b"Unknown scope nodes:admin" in response.content


def test_revoking_deletes_the_client(alice_browser, acme):
    alice_browser.post("/api-access/", {"name": "ci", "scopes": ["deployments:read"]})
    account = ServiceAccount.objects.get(tenant=acme)
    alice_browser.post(f"/api-access/{account.pk}/revoke/")
    assert not Application.objects.filter(pk=account.application_id).exists()


def test_a_member_cannot_manage_api_clients(bob_browser, acme):
    page = bob_browser.get("/api-access/")
    assert page.status_code == 403 and b"is &#x27;member&#x27;" in page.content
    assert bob_browser.post("/api-access/", {"name": "x", "scopes": ["deployments:read"]}).status_code == 403
    assert not ServiceAccount.objects.filter(tenant=acme).exists()


def test_another_tenants_client_cannot_be_revoked(mallory_browser, alice_browser, acme):
    alice_browser.post("/api-access/", {"name": "ci", "scopes": ["deployments:read"]})
    account = ServiceAccount.objects.get(tenant=acme)
    mallory_browser.post(f"/api-access/{account.pk}/revoke/")
    assert ServiceAccount.objects.filter(pk=account.pk).exists()
