import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from oauth2_provider.models import Application

from accounts.models import ServiceAccount


def run(*args) -> dict:
    out = StringIO()
    call_command("create_api_client", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, "stdout must be one JSON object and nothing else"
    return json.loads(lines[0])


def test_it_prints_client_id_and_secret(acme):
    result = run("acme")
    assert set(result) == {"client_id", "client_secret"}
    application = Application.objects.get(client_id=result["client_id"])
    assert application.authorization_grant_type == Application.GRANT_CLIENT_CREDENTIALS
    assert application.client_type == Application.CLIENT_CONFIDENTIAL
    assert application.service_account.tenant == acme
    assert application.name == "acme API client"


def test_the_secret_is_stored_hashed(acme):
    result = run("acme")
    stored = Application.objects.get(client_id=result["client_id"]).client_secret
    assert result["client_secret"] not in stored


def test_it_takes_a_name_and_scopes(acme):
    result = run("acme", "--name", "CI deployer", "--scopes", "deployments:read deployments:write")
    account = ServiceAccount.objects.get(application__client_id=result["client_id"])
    assert account.application.name == "CI deployer"
    assert account.scopes == "deployments:read deployments:write"


def test_commas_and_repeats_in_scopes_are_tolerated(acme):
    result = run("acme", "--scopes", "templates:read,templates:read deployments:read")
    assert ServiceAccount.objects.get(application__client_id=result["client_id"]).scopes == "templates:read deployments:read"


def test_an_unknown_tenant_is_an_error(db):
    with pytest.raises(CommandError, match="No tenant 'nope'"):
        run("nope")
    assert not Application.objects.exists()


def test_an_unknown_scope_is_an_error(acme):
    with pytest.raises(CommandError, match="Unknown scope"):
        run("acme", "--scopes", "deployments:read everything")
    assert not Application.objects.exists()


def test_nodes_admin_is_refused_for_a_customer(acme):
    with pytest.raises(CommandError, match="operators"):
        run("acme", "--scopes", "nodes:admin")
    assert not Application.objects.exists()
