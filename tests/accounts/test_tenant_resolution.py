"""Which tenant a request acts for (X-Tenant), seen through GET /api/v1/templates: each tenant
has one private template, so the list says who the caller is acting for."""

import pytest
from rest_framework.test import APIClient

from accounts.services import membership_add, user_signup
from tests.accounts.oauth_helpers import api_client_for_tenant, client_credentials_token
from tests.conftest import client_for
from tests.templates.factories import TemplateFactory


@pytest.fixture
def carol(acme, evil):
    """Signed up (so she has a personal tenant) and also a member of acme."""
    user, personal = user_signup(email="carol@example.com", password=None)
    membership_add(tenant=acme, user=user)
    for tenant in (personal, acme, evil):
        TemplateFactory(slug=f"{tenant.slug}-private", tenant=tenant)
    return user


def private_slugs(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [t["slug"] for t in response.json()["templates"] if t["visibility"] == "private"]


def test_without_x_tenant_a_user_acts_for_their_personal_tenant(carol):
    assert private_slugs(client_for(carol).get("/api/v1/templates")) == ["u-carol-private"]


def test_x_tenant_names_another_tenant_the_user_belongs_to(carol):
    assert private_slugs(client_for(carol, tenant="acme").get("/api/v1/templates")) == ["acme-private"]


@pytest.mark.parametrize("slug", ["evil", "no-such-tenant"])
def test_a_tenant_the_user_is_not_in_is_403(carol, slug):
    response = client_for(carol, tenant=slug).get("/api/v1/templates")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert "not a member" in response.json()["detail"]


def test_a_session_user_picks_a_tenant_the_same_way(carol):
    client = APIClient()
    client.force_login(carol)
    assert private_slugs(client.get("/api/v1/templates")) == ["u-carol-private"]
    assert private_slugs(client.get("/api/v1/templates", HTTP_X_TENANT="acme")) == ["acme-private"]
    assert client.get("/api/v1/templates", HTTP_X_TENANT="evil").status_code == 403


def test_a_client_credentials_token_acts_for_its_tenant_only(client, carol):
    client_id, secret = api_client_for_tenant("acme")
    token = client_credentials_token(client, client_id, secret).json()["access_token"]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert private_slugs(api.get("/api/v1/templates")) == ["acme-private"]
    assert private_slugs(api.get("/api/v1/templates", HTTP_X_TENANT="acme")) == ["acme-private"]
    other = api.get("/api/v1/templates", HTTP_X_TENANT="evil")
    assert other.status_code == 403
    assert "acts only for tenant 'acme'" in other.json()["detail"]


def test_a_user_in_no_tenant_is_told_so(db):
    from tests.factories import UserFactory

    loner = UserFactory(username="loner@example.com")
    response = client_for(loner).get("/api/v1/templates")
    assert response.status_code == 403
    assert "no tenant" in response.json()["detail"]


def test_the_fleet_catalog_needs_no_tenant(db):
    from tests.factories import UserFactory

    loner = UserFactory(username="loner@example.com")
    assert client_for(loner).get("/api/v1/hardware").status_code == 200
    assert client_for(loner).get("/api/v1/locations").status_code == 200


@pytest.mark.parametrize("header", ["acme\x00", "\x00", "a" * 5000, "ACME", "../acme"])
def test_a_malformed_x_tenant_is_a_403_not_a_server_error(alice, header):
    client = client_for(alice, tenant=header)
    response = client.get("/api/v1/deployments")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
