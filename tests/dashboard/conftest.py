"""Dashboard tests log in with Django's test client (a session, as a browser would)."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.deployments.conftest import h100, ollama, us_east  # noqa: F401  (shared fixtures)


def browser_for(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def alice_browser(alice):
    client = browser_for(alice)
    # alice has a personal tenant too; these tests act in acme, as if chosen in the switcher.
    client.post("/tenant/", {"tenant": "acme"})
    return client


@pytest.fixture
def bob_browser(bob):
    client = browser_for(bob)
    client.post("/tenant/", {"tenant": "acme"})
    return client


@pytest.fixture
def mallory_browser(mallory):
    return browser_for(mallory)
