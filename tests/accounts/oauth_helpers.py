"""Helpers to drive django-oauth-toolkit's real views through /o/ in tests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from io import StringIO
from urllib.parse import parse_qs, urlparse

from django.core.management import call_command
from oauth2_provider.models import Application

REDIRECT_URI = "http://127.0.0.1:8765/callback"


def basic_auth(client_id: str, client_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


def api_client_for_tenant(slug: str, *scopes: str) -> tuple[str, str]:
    out = StringIO()
    args = ["create_api_client", slug] + (["--scopes", " ".join(scopes)] if scopes else [])
    call_command(*args, stdout=out)
    result = json.loads(out.getvalue())
    return result["client_id"], result["client_secret"]


def client_credentials_token(client, client_id: str, client_secret: str, scope: str | None = None):
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    return client.post("/o/token/", data, HTTP_AUTHORIZATION=basic_auth(client_id, client_secret))


def public_app(name: str = "gantry-cli") -> Application:
    return Application.objects.create(
        name=name, client_type=Application.CLIENT_PUBLIC, authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=REDIRECT_URI, skip_authorization=False,
    )


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(browser, app: Application, *, scope: str, challenge: str, state: str = "xyz") -> str:
    """Walk the consent page as a logged-in browser; returns the authorization code."""
    params = {
        "response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT_URI, "scope": scope,
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
    }
    page = browser.get("/o/authorize/", params)
    assert page.status_code == 200, page.content[:500]
    response = browser.post("/o/authorize/", {**params, "allow": "Allow"})
    assert response.status_code == 302, response.content[:500]
    location = urlparse(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0]
