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
