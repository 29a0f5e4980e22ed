import pytest

from tests.conftest import client_for
from tests.factories import LocationFactory

# What a customer's full token for volumes and deployments carries.
ALL = "volumes:read volumes:write deployments:read deployments:write"


@pytest.fixture
def loc(db):
    return LocationFactory(slug="us-east-1")


@pytest.fixture
def api(alice):
    return client_for(alice, scopes=ALL, tenant="acme")
