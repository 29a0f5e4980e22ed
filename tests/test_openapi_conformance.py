"""The OpenAPI document is the contract: schemathesis generates requests from it (valid and
invalid) and every answer must be a non-5xx whose status, content type and body the document
describes. Runs in-process against the real Django stack and the real database, as alice with
every customer scope, on a catalog and a few deployments of her own (plus mallory's)."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import client_for
from tests.factories import issue_token


@pytest.fixture
def api_schema(db, client):
    # The document exactly as served to clients at /api/v1/schema/.
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    document = response.json()
    # drf-spectacular emits OpenAPI 3.1; schemathesis 3.x supports it behind a flag.
    schemathesis.experimental.OPEN_API_3_1.enable()
    return schemathesis.from_dict(document)


schema = schemathesis.from_pytest_fixture("api_schema")


@pytest.fixture
def alice_world(alice, mallory, django_db_setup):
    from django.core.management import call_command

    call_command("load_catalog", verbosity=0)
    client = client_for(alice, tenant="acme")
    body = {"name": "seeded", "template_id": "hello", "gpus_per_container": 0, "replica_count": 1}
    client.post("/api/v1/deployments", body, format="json")
    token = issue_token(user=alice)
    return {"Authorization": f"Bearer {token.token}", "X-Tenant": "acme"}


@pytest.fixture
def wsgi_app():
    """Django's WSGI handler, minus the per-request connection closing that Django's own test
    client also switches off: the test's transaction must survive between calls."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield WSGIHandler()
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_every_operation_answers_as_documented(case, alice_world, wsgi_app):
    response = case.call_wsgi(app=wsgi_app, headers=alice_world)
    case.validate_response(response, checks=(not_a_server_error, status_code_conformance,
                                             content_type_conformance, response_schema_conformance))
