"""The fixed cast every API test uses (STYLE.md: healthchecks' alice/bob/charlie):

- alice owns tenant "acme" (and has her personal tenant too);
- bob is a plain member of "acme";
- mallory owns tenant "evil" and belongs nowhere else.
So "someone else's object" is one line in any test: create it for mallory, ask as alice.
"""

from __future__ import annotations

import os

import pytest
from rest_framework.test import APIClient

from accounts.models import Membership
from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token


# The local registry is the one special-address registry the tests (and `make up`) trust; set
# here for the processes the tests start too (agents, daphne, Celery read the environment).
LOCAL_REGISTRY = "127.0.0.1:5000"
os.environ.setdefault("GANTRY_TRUSTED_REGISTRIES", LOCAL_REGISTRY)


@pytest.fixture(autouse=True)
def _trusted_registries(settings):
    settings.GANTRY_TRUSTED_REGISTRIES = [LOCAL_REGISTRY]


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch) -> dict[str, list[str]]:
    """Registry names the API resolves come from this mapping, never from a real resolver: a
    test sends no DNS query. Unknown names do not resolve (the API then lets the node decide)."""
    answers: dict[str, list[str]] = {}
    monkeypatch.setattr("cloud.registries.resolve_host", lambda host: list(answers.get(host, [])))
    return answers


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Full-strength PBKDF2 costs ~1 s per user on this machine; hashing strength is Django's
    # concern, not what these tests check.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_account_throttle(settings):
    # The front doors' limits (accounts/throttle.py) count in the shared Redis per address and
    # per account or client; tests all come from one address and reuse names, so they are off
    # here. tests/accounts/test_front_doors.py turns them back on with fresh addresses.
    settings.ACCOUNT_THROTTLE = (10**6, 60)
    settings.ACCOUNT_GUESS_DELAY = (10**6, 1, 60)


@pytest.fixture
def acme(db):
    return TenantFactory(slug="acme", name="Acme Corp")


@pytest.fixture
def evil(db):
    return TenantFactory(slug="evil", name="Evil Corp")


@pytest.fixture
def alice(acme):
    user = UserFactory(username="alice@example.com")
    MembershipFactory(user=user, tenant=acme, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def bob(acme):
    user = UserFactory(username="bob@example.com")
    MembershipFactory(user=user, tenant=acme, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def mallory(evil):
    user = UserFactory(username="mallory@example.com")
    MembershipFactory(user=user, tenant=evil, role=Membership.Role.OWNER)
    return user


def client_for(user=None, *,
               scopes: str = "deployments:read deployments:write volumes:read volumes:write templates:read billing:read "
                             "billing:write",
               tenant: str | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        token = issue_token(user=user, scopes=scopes)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}", **({"HTTP_X_TENANT": tenant} if tenant else {}))
    return client


@pytest.fixture
def as_alice(alice):
    return client_for(alice, tenant="acme")


@pytest.fixture
def as_bob(bob):
    return client_for(bob, tenant="acme")


@pytest.fixture
def as_mallory(mallory):
    return client_for(mallory, tenant="evil")


@pytest.fixture
def anonymous():
    return APIClient()
