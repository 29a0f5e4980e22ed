"""Fixtures shared by the deployments tests: a hardware type, a template, a request body."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import client_for
from tests.deployments.factories import TemplateFactory
from tests.factories import HardwareTypeFactory, LocationFactory

URL = "/api/v1/deployments"


@pytest.fixture
def h100(db):
    return HardwareTypeFactory(slug="h100", price_per_gpu_hour=Decimal("2.5000"), allowed_gpu_counts=[1, 2, 4, 8])


@pytest.fixture
def us_east(db):
    return LocationFactory(slug="us-east")


@pytest.fixture
def ollama(db):
    return TemplateFactory(slug="ollama", image="ollama/ollama:0.3.12", default_env={"OLLAMA_HOST": "0.0.0.0"},
                           traffic_port=11434, entrypoint=["/bin/ollama"], args=["serve"], min_gpus=1, max_gpus=8)


@pytest.fixture
def cpu_small(db):
    """A CPU-only hardware type with four replica slots a node: the fleet and lifecycle tests' node."""
    return HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=4, allowed_gpu_counts=[0])


@pytest.fixture
def body(h100):
    """A minimal valid io.net-style body."""
    def make(**overrides):
        data = {"image_url": "ghcr.io/acme/app:1.0", "hardware_id": h100.id, "gpus_per_container": 1}
        data.update(overrides)
        return {k: v for k, v in data.items() if v is not ...}
    return make


@pytest.fixture
def as_alice_readonly(alice):
    return client_for(alice, scopes="deployments:read", tenant="acme")


def post_concurrently(user, data, *, times: int, headers: dict | None = None, url: str = URL) -> list:
    """POST the same body `times` times from as many threads released at once (a barrier), each
    on its own database connection, as concurrent API calls would be. Returns the responses."""
    import threading

    from django.db import connection

    responses = []
    barrier = threading.Barrier(times)

    def attempt():
        client = client_for(user, tenant="acme")
        barrier.wait()
        try:
            responses.append(client.post(url, data, format="json", **(headers or {})))
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses
