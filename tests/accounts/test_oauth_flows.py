"""OAuth2 end to end through /o/ with django-oauth-toolkit's real views: client credentials,
authorization code + PKCE, refresh, revoke and introspection."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.accounts.oauth_helpers import (
    REDIRECT_URI,
    api_client_for_tenant,
    authorize,
    basic_auth,
    client_credentials_token,
    pkce_pair,
    public_app,
)
from tests.templates.factories import TemplateFactory


def bearer(token: str, **headers) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", **headers)
    return client


# -- client credentials -------------------------------------------------------------------

def test_client_credentials_give_a_token_that_acts_for_the_tenant(client, acme, evil):
    TemplateFactory(slug="acme-only", tenant=acme)
    TemplateFactory(slug="evil-only", tenant=evil)
    client_id, secret = api_client_for_tenant("acme")
    response = client_credentials_token(client, client_id, secret)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert "refresh_token" not in body  # RFC 6749 4.4.3: no refresh token for client credentials
    assert set(body["scope"].split()) == {"deployments:read", "deployments:write", "volumes:read", "volumes:write",
                                          "templates:read", "billing:read", "billing:write"}

    listed = bearer(body["access_token"]).get("/api/v1/templates")
    assert listed.status_code == 200
    assert [t["slug"] for t in listed.json()["templates"]] == ["acme-only"]


def test_a_restricted_client_gets_only_its_scopes(client, acme):
    client_id, secret = api_client_for_tenant("acme", "templates:read")
    response = client_credentials_token(client, client_id, secret, scope="templates:read")
    assert response.status_code == 200
    assert response.json()["scope"] == "templates:read"
    refused = client_credentials_token(client, client_id, secret, scope="deployments:write")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


def test_a_customer_client_can_never_get_nodes_admin(client, acme):
    client_id, secret = api_client_for_tenant("acme")
    response = client_credentials_token(client, client_id, secret, scope="nodes:admin")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_a_wrong_client_secret_is_refused(client, acme):
    client_id, _ = api_client_for_tenant("acme")
    response = client_credentials_token(client, client_id, "not-the-secret")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# -- authorization code + PKCE ------------------------------------------------------------

@pytest.fixture
def browser(alice):
    browser = Client()
    browser.force_login(alice)
    return browser


def test_authorization_code_with_pkce_acts_as_the_user(browser, alice, acme):
    TemplateFactory(slug="acme-only", tenant=acme)
    app = public_app()
    verifier, challenge = pkce_pair()
    code = authorize(browser, app, scope="templates:read deployments:read", challenge=challenge)

    response = Client().post("/o/token/", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": app.client_id, "code_verifier": verifier,
    })
    assert response.status_code == 200, response.content
    tokens = response.json()
    assert tokens["access_token"] and tokens["refresh_token"]
    assert set(tokens["scope"].split()) == {"templates:read", "deployments:read"}

    listed = bearer(tokens["access_token"], HTTP_X_TENANT="acme").get("/api/v1/templates")
    assert listed.status_code == 200
    assert [t["slug"] for t in listed.json()["templates"]] == ["acme-only"]


def test_a_wrong_code_verifier_is_rejected(browser, alice):
    app = public_app()
    _, challenge = pkce_pair()
    code = authorize(browser, app, scope="templates:read", challenge=challenge)
    wrong_verifier, _ = pkce_pair()
    response = Client().post("/o/token/", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": app.client_id, "code_verifier": wrong_verifier,
    })
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_pkce_is_required(browser, alice):
    app = public_app()
    response = browser.get("/o/authorize/", {
        "response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT_URI, "scope": "templates:read",
    })
    # DOT redirects the error back to the client rather than showing a consent page.
    assert response.status_code == 302
    assert "error=invalid_request" in response["Location"]


def test_the_authorize_page_sends_strangers_to_the_login_page(client, db):
    app = public_app()
    _, challenge = pkce_pair()
    response = client.get("/o/authorize/", {
        "response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT_URI, "scope": "templates:read",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/o/authorize/")


def test_a_customer_cannot_consent_to_nodes_admin(browser, alice):
    app = public_app()
    _, challenge = pkce_pair()
    response = browser.get("/o/authorize/", {
        "response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT_URI, "scope": "nodes:admin",
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    assert response.status_code == 302
    assert "error=invalid_scope" in response["Location"]


def _user_tokens(browser) -> dict:
    app = public_app()
    verifier, challenge = pkce_pair()
    code = authorize(browser, app, scope="templates:read", challenge=challenge)
    tokens = Client().post("/o/token/", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": app.client_id, "code_verifier": verifier,
    }).json()
    tokens["client_id"] = app.client_id
    return tokens


# -- refresh, revoke, introspect ----------------------------------------------------------

def test_refresh_gives_a_new_access_token_and_rotates_the_refresh_token(browser, alice):
    tokens = _user_tokens(browser)
    response = Client().post("/o/token/", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": tokens["client_id"],
    })
    assert response.status_code == 200, response.content
    fresh = response.json()
    assert fresh["access_token"] != tokens["access_token"]
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert bearer(fresh["access_token"]).get("/api/v1/templates").status_code == 200
    # The old refresh token was rotated away.
    again = Client().post("/o/token/", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": tokens["client_id"],
    })
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_revoked_token_gets_401(browser, alice):
    tokens = _user_tokens(browser)
    api = bearer(tokens["access_token"])
    assert api.get("/api/v1/templates").status_code == 200
    response = Client().post("/o/revoke_token/", {"token": tokens["access_token"], "client_id": tokens["client_id"]})
    assert response.status_code == 200
    after = api.get("/api/v1/templates")
    assert after.status_code == 401
    assert after["WWW-Authenticate"].startswith("Bearer")


def test_a_resource_server_introspects_with_confidential_client_credentials(client, browser, alice, acme):
    tokens = _user_tokens(browser)
    rs_id, rs_secret = api_client_for_tenant("acme")  # any confidential client may introspect
    response = client.post("/o/introspect/", {"token": tokens["access_token"]},
                           HTTP_AUTHORIZATION=basic_auth(rs_id, rs_secret))
    assert response.status_code == 200
    body = response.json()
    assert body["active"] is True and body["scope"] == "templates:read"
    assert body["username"] == "alice@example.com" and body["client_id"] == tokens["client_id"]

    client.post("/o/revoke_token/", {"token": tokens["access_token"], "client_id": tokens["client_id"]})
    gone = client.post("/o/introspect/", {"token": tokens["access_token"]}, HTTP_AUTHORIZATION=basic_auth(rs_id, rs_secret))
    assert gone.json() == {"active": False}


def test_introspection_without_client_credentials_is_refused(client, browser, alice):
    tokens = _user_tokens(browser)
    # A plain user token has no `introspection` scope: it may not ask about tokens.
    response = client.post("/o/introspect/", {"token": tokens["access_token"]},
                           HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}")
    assert response.status_code == 403
    assert client.post("/o/introspect/", {"token": tokens["access_token"]}).status_code == 403


def test_a_restricted_client_asking_for_no_scope_gets_its_own_scopes(client, acme):
    client_id, secret = api_client_for_tenant("acme", "templates:read", "deployments:read")
    response = client_credentials_token(client, client_id, secret)
    assert response.status_code == 200, response.content
    assert set(response.json()["scope"].split()) == {"templates:read", "deployments:read"}
