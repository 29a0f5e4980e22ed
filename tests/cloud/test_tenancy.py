"""The plumbing reaches the accounts app's tenant rules through a registered resolver
(cloud/tenancy.py); without one it fails loudly, never by letting a call through."""

import pytest

from accounts import selectors
from cloud import tenancy


def test_accounts_registers_its_resolver():
    assert tenancy.resolver() is selectors


def test_an_unregistered_resolver_fails_loudly(monkeypatch):
    monkeypatch.setattr(tenancy, "_resolver", None)
    with pytest.raises(RuntimeError, match="no TenantResolver registered"):
        tenancy.tenant_for_request(user=None, token=None, tenant_slug=None)
    with pytest.raises(RuntimeError, match="no TenantResolver registered"):
        tenancy.access_standing(tenant_id=1, user_id=None, token_id=None)


def test_the_api_uses_the_registered_resolver(monkeypatch, client, django_user_model, db):
    user = django_user_model.objects.create_user(username="x@example.com", password="pw")
    client.force_login(user)
    calls = []

    class Refusing:
        def tenant_for_request(self, *, user, token, tenant_slug):
            calls.append(tenant_slug)
            raise tenancy.TenantForbidden("not through here")

        def access_standing(self, **kwargs):
            return {}

    monkeypatch.setattr(tenancy, "_resolver", Refusing())
    response = client.get("/api/v1/deployments", HTTP_X_TENANT="acme")
    assert response.status_code == 403 and calls == ["acme"]
