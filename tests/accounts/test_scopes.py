"""Scopes and token validity on the API: no token 401 (with a Bearer challenge), a token
without the needed scope 403, an expired or unknown token 401."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import client_for
from tests.factories import issue_token

ENDPOINTS = ["/api/v1/templates", "/api/v1/hardware", "/api/v1/locations"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_no_token_is_401_with_a_bearer_challenge(anonymous, db, url):
    response = anonymous.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_token_without_templates_read_is_403(alice, url):
    response = client_for(alice, scopes="deployments:read deployments:write billing:read").get(url)
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert "templates:read" in response.json()["detail"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_templates_read_alone_is_enough_to_read(alice, url):
    assert client_for(alice, scopes="templates:read").get(url).status_code == 200


def test_an_expired_token_is_401(alice):
    token = issue_token(user=alice, scopes="templates:read")
    token.expires = timezone.now() - timedelta(seconds=1)
    token.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}")
    response = client.get("/api/v1/templates")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_unknown_token_is_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    assert client.get("/api/v1/templates").status_code == 401


def test_writing_templates_needs_deployments_write_not_templates_read(alice):
    body = {"slug": "mine", "name": "Mine", "image": "acme/app:1"}
    assert client_for(alice, scopes="templates:read", tenant="acme").post("/api/v1/templates", body, format="json").status_code == 403
    assert client_for(alice, scopes="deployments:write", tenant="acme").post("/api/v1/templates", body, format="json").status_code == 201


# -- a read scope never authorises a write ----------------------------------------------------

def test_a_read_scope_cannot_change_the_spend_limit(alice):
    body = {"monthly_spend_limit": "1.00"}
    read_only = client_for(alice, scopes="billing:read", tenant="acme")
    response = read_only.patch("/api/v1/billing/limits", body, format="json")
    assert response.status_code == 403 and "billing:write" in response.json()["detail"]
    assert read_only.get("/api/v1/billing/limits").json()["monthly_spend_limit"] is None
    writer = client_for(alice, scopes="billing:read billing:write", tenant="acme")
    assert writer.patch("/api/v1/billing/limits", body, format="json").status_code == 200


# POSTs that change nothing a customer owns: what a deployment would cost, and a 30 s one-time
# ticket to open the log WebSocket (reading logs is what deployments:read is for).
READ_ONLY_POSTS = {("deployment-estimate", "POST"), ("deployment-logs-ticket", "POST")}
# Routes outside the scoped permission, with their own credential: the agent's join token.
OWN_CREDENTIAL = {"node-join"}


def _api_routes():
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns, prefix=""):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                yield prefix + str(entry.pattern), entry

    for route, entry in walk(get_resolver().url_patterns):
        if route.startswith("api/v1/") and getattr(entry.callback, "cls", None) is not None:
            yield route, entry


def test_every_unsafe_api_method_needs_a_write_scope():
    """Walks the URL conf: every POST/PUT/PATCH/DELETE a view answers needs a `:write` (or the
    operators' `nodes:admin`) scope, so a new endpoint cannot ship readable-as-writable."""
    from cloud.auth import ScopedTenantPermission, required_scopes_for

    checked, wrong = 0, []
    for route, entry in _api_routes():
        cls = entry.callback.cls
        actions = getattr(entry.callback, "actions", None)  # a viewset: method -> action
        view = cls(**getattr(entry.callback, "initkwargs", {}))
        methods = ([m.upper() for m in actions] if actions is not None
                   else [m.upper() for m in cls.http_method_names if hasattr(cls, m)])
        for method in methods:
            if method in {"GET", "HEAD", "OPTIONS"}:
                continue
            if actions is not None:
                view.action = actions[method.lower()]
            if entry.name in OWN_CREDENTIAL:
                assert not any(issubclass(p, ScopedTenantPermission) for p in view.permission_classes), route
                continue
            assert any(issubclass(p, ScopedTenantPermission) for p in view.permission_classes), route
            checked += 1
            scopes = required_scopes_for(view, method)
            if (entry.name, method) in READ_ONLY_POSTS:
                continue
            if not any(s.endswith(":write") or s == "nodes:admin" for s in scopes):
                wrong.append(f"{method} /{route} ({entry.name}): {scopes}")
    assert checked > 10  # the walk found the API
    assert not wrong, "unsafe methods a read scope allows:\n" + "\n".join(wrong)


def test_the_openapi_document_agrees(anonymous, db):
    """The published scopes of every unsafe operation are the enforced ones (same attributes)."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in {"post", "put", "patch", "delete"}:
                continue
            scopes = [s for req in operation.get("security", []) for s in req.get("oauth2", [])]
            if scopes and not any(s.endswith(":write") or s == "nodes:admin" for s in scopes):
                assert path.endswith(("/estimate", "/logs/ticket")), (method, path, scopes)
