"""Who may make OAuth2 clients, and which clients may exist at all (accounts/oauth.py,
accounts/oauth_urls.py): no self-service client pages, no password grant, plain-HTTP redirect
URIs only to loopback, and tokens shown only as a prefix in the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, Grant, RefreshToken

from tests.accounts.oauth_helpers import REDIRECT_URI, basic_auth, pkce_pair, public_app
from tests.factories import UserFactory


@pytest.fixture
def browser(alice):
    browser = Client()
    browser.force_login(alice)
    return browser


# -- no self-service client management --------------------------------------------------------

@pytest.mark.parametrize("path", ["/o/applications/", "/o/applications/register/", "/o/authorized_tokens/"])
def test_dots_management_pages_are_not_mounted(browser, path):
    assert browser.get(path).status_code == 404
    assert browser.post(path, {"name": "mine", "client_type": "public", "authorization_grant_type": "password",
                               "redirect_uris": "http://attacker.example/cb"}).status_code == 404
    assert not Application.objects.filter(name="mine").exists()


@pytest.mark.parametrize("action", ["", "update/", "delete/"])
def test_a_customer_cannot_open_or_change_even_their_own_client(browser, alice, action):
    app = public_app()
    Application.objects.filter(pk=app.pk).update(user=alice)
    path = f"/o/applications/{app.pk}/{action}"
    assert browser.get(path).status_code == 404
    browser.post(path, {"name": app.name, "client_id": app.client_id, "client_type": "public",
                        "authorization_grant_type": "authorization-code", "redirect_uris": "http://attacker.example/cb",
                        "algorithm": ""})
    app.refresh_from_db()
    assert app.redirect_uris == REDIRECT_URI


# -- the password grant is off ----------------------------------------------------------------

def _legacy_password_client(alice) -> tuple[Application, str]:
    """A client registered before the rules: made as a confidential client, then switched to the
    password grant in the database (as an old row would be)."""
    secret = "legacy-client-secret-0123456789"
    app = Application.objects.create(name="legacy", client_type=Application.CLIENT_CONFIDENTIAL,
                                     authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
                                     client_secret=secret, user=alice)
    Application.objects.filter(pk=app.pk).update(authorization_grant_type=Application.GRANT_PASSWORD)
    app.refresh_from_db()
    return app, secret


def test_the_token_endpoint_refuses_the_password_grant(client, alice):
    app, secret = _legacy_password_client(alice)
    response = client.post("/o/token/", {"grant_type": "password", "username": "alice@example.com",
                                         "password": "correct horse battery staple"},
                           HTTP_AUTHORIZATION=basic_auth(app.client_id, secret))
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    assert not AccessToken.objects.filter(application=app).exists()


def test_a_legacy_password_clients_tokens_stop_working(client, alice):
    app, secret = _legacy_password_client(alice)
    token = AccessToken.objects.create(user=alice, application=app, token="legacy-access-token-0123456789",
                                       scope="templates:read", expires=timezone.now() + timedelta(hours=1))
    RefreshToken.objects.create(user=alice, application=app, token="legacy-refresh-token-0123456789",
                                access_token=token)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token.token}")
    assert api.get("/api/v1/templates").status_code == 401
    refreshed = client.post("/o/token/",
                            {"grant_type": "refresh_token", "refresh_token": "legacy-refresh-token-0123456789"},
                            HTTP_AUTHORIZATION=basic_auth(app.client_id, secret))
    assert refreshed.status_code in (400, 401) and "access_token" not in refreshed.json()


def test_no_new_password_client_can_be_made(alice):
    app = Application(name="pw", client_type=Application.CLIENT_CONFIDENTIAL,
                      authorization_grant_type=Application.GRANT_PASSWORD, user=alice)
    with pytest.raises(ValidationError, match="password grant"):
        app.full_clean()
    with pytest.raises(ValidationError, match="password grant"):
        app.save()


# -- redirect URIs ----------------------------------------------------------------------------

def _code_client(redirect_uris: str) -> Application:
    return Application(name="web", client_type=Application.CLIENT_PUBLIC,
                       authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE, redirect_uris=redirect_uris)


@pytest.mark.parametrize("uri", ["http://app.example.com/cb", "http://10.0.0.5/cb", "http://127.0.0.1.example.com/cb",
                                 "http://localhost.example.com/cb", "ftp://app.example.com/cb",
                                 "javascript://alert(1)"])
def test_plain_http_redirect_uris_are_refused_unless_loopback(db, uri):
    with pytest.raises(ValidationError):
        _code_client(f"https://ok.example.com/cb {uri}").full_clean()
    with pytest.raises(ValidationError):
        _code_client(uri).save()  # a save that skips full_clean is held to the same rule
    assert not Application.objects.filter(name="web").exists()


@pytest.mark.parametrize("uri", ["https://app.example.com/cb", "http://127.0.0.1:8765/callback", "http://127.0.0.1/cb",
                                 "http://[::1]:9000/cb", "http://localhost:8080/cb"])
def test_https_and_loopback_redirect_uris_are_accepted(db, uri):
    app = _code_client(uri)
    app.full_clean()
    app.save()


def test_the_admin_form_refuses_a_plain_http_redirect_uri(db):
    staff = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(staff)
    response = admin.post("/admin/oauth2_provider/application/add/", {
        "client_id": "admin-made", "client_secret": "admin-made-secret-0123456789", "hash_client_secret": "on",
        "client_type": "public", "authorization_grant_type": "authorization-code", "name": "admin-made",
        "redirect_uris": "http://app.example.com/cb", "post_logout_redirect_uris": "", "allowed_origins": "",
        "algorithm": "", "skip_authorization": "",
    })
    assert response.status_code == 200  # the form again, with the error; not a 500
    assert b"only loopback" in response.content
    assert not Application.objects.filter(client_id="admin-made").exists()


def test_authorize_refuses_a_plain_http_redirect_registered_before_the_rule(browser, alice):
    app = public_app()
    Application.objects.filter(pk=app.pk).update(redirect_uris="http://app.example.com/cb")
    _, challenge = pkce_pair()
    params = {"response_type": "code", "client_id": app.client_id, "scope": "templates:read",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    for extra in ({"redirect_uri": "http://app.example.com/cb"}, {}):  # named, or the registered default
        page = browser.get("/o/authorize/", {**params, **extra})
        assert page.status_code == 400  # an error page here, never a redirect there
        posted = browser.post("/o/authorize/", {**params, **extra, "allow": "Allow"})
        assert "app.example.com" not in posted.get("Location", "")
    assert not Grant.objects.filter(application=app).exists()


def test_authorize_still_serves_the_loopback_cli(browser, alice):
    app = public_app()
    _, challenge = pkce_pair()
    page = browser.get("/o/authorize/", {"response_type": "code", "client_id": app.client_id, "scope": "templates:read",
                                         "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
                                         "code_challenge_method": "S256"})
    assert page.status_code == 200


# -- the admin shows tokens as a prefix ----------------------------------------------------------

def test_the_admin_shows_tokens_and_codes_only_as_a_prefix(alice):
    staff = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(staff)
    app = public_app()
    access = AccessToken.objects.create(user=alice, application=app, token="AcCeSs" + "a" * 40, scope="templates:read",
                                        expires=timezone.now() + timedelta(hours=1))
    refresh = RefreshToken.objects.create(user=alice, application=app, token="ReFrEs" + "r" * 40, access_token=access)
    grant = Grant.objects.create(user=alice, application=app, code="CoDeXy" + "c" * 40, redirect_uri=REDIRECT_URI,
                                 expires=timezone.now() + timedelta(minutes=5), code_challenge="x",
                                 code_challenge_method="S256")
    secrets = [access.token, refresh.token, grant.code]
    pages = [
        "/admin/oauth2_provider/accesstoken/", f"/admin/oauth2_provider/accesstoken/{access.pk}/change/",
        f"/admin/oauth2_provider/accesstoken/{access.pk}/delete/",
        "/admin/oauth2_provider/refreshtoken/", f"/admin/oauth2_provider/refreshtoken/{refresh.pk}/change/",
        "/admin/oauth2_provider/grant/", f"/admin/oauth2_provider/grant/{grant.pk}/change/",
        f"/admin/oauth2_provider/application/{app.pk}/delete/",  # lists the tokens it would delete
    ]
    for page in pages:
        response = admin.get(page)
        assert response.status_code == 200, page
        body = response.content.decode()
        for secret in secrets:
            assert secret not in body, (page, secret[:6])
    listing = admin.get("/admin/oauth2_provider/accesstoken/").content.decode()
    assert "AcCeSs…" in listing
    # A search by the full token finds nothing (the search box echoes what was typed, nothing more).
    for kind, value in (("accesstoken", access.token), ("refreshtoken", refresh.token), ("grant", grant.code)):
        found = admin.get(f"/admin/oauth2_provider/{kind}/", {"q": value}).content.decode()
        assert "0 results" in found, kind
