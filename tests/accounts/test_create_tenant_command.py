import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.models import Membership, Tenant
from accounts.selectors import personal_tenant_for
from billing.selectors import tenant_balance
from tests.factories import UserFactory


def run(*args) -> tuple[dict, str]:
    out, err = StringIO(), StringIO()
    call_command("create_tenant", *args, stdout=out, stderr=err)
    return json.loads(out.getvalue()), err.getvalue()


def test_it_creates_the_owner_and_the_tenant(db):
    result, _ = run("acme", "--owner", "Alice@Example.com", "--password", "s3cret-enough-pass")
    assert result == {"tenant": "acme", "owner": "alice@example.com", "owner_created": True}
    user = get_user_model().objects.get(username="alice@example.com")
    assert user.check_password("s3cret-enough-pass")
    membership = Membership.objects.get(user=user, tenant__slug="acme")
    assert membership.role == Membership.Role.OWNER
    # The owner also got a personal tenant, as a web signup would.
    assert personal_tenant_for(user=user) is not None


def test_it_reuses_an_existing_user(db):
    user = UserFactory(username="alice@example.com")
    result, err = run("acme", "--owner", "alice@example.com", "--password", "ignored-password-1")
    assert result["owner_created"] is False
    assert "left unchanged" in err
    user.refresh_from_db()
    assert not user.check_password("ignored-password-1")
    assert Membership.objects.filter(user=user, tenant__slug="acme", role="owner").exists()


def test_stdout_is_exactly_one_json_object(db):
    out = StringIO()
    call_command("create_tenant", "acme", "--owner", "a@example.com", stdout=out)
    assert len(out.getvalue().strip().splitlines()) == 1
    json.loads(out.getvalue())


def test_an_existing_slug_is_a_clear_error(db):
    run("acme", "--owner", "a@example.com")
    with pytest.raises(CommandError, match="already exists"):
        run("acme", "--owner", "b@example.com")
    # Nothing half-made: b's account was rolled back with the failed tenant.
    assert not get_user_model().objects.filter(username="b@example.com").exists()


@pytest.mark.parametrize("slug", ["Acme", "acme_corp", "-acme", "a" * 60])
def test_an_invalid_slug_is_refused(db, slug):
    with pytest.raises(CommandError, match="slug"):
        run(slug, "--owner", "a@example.com")
    assert not Tenant.objects.filter(slug=slug).exists()


def test_the_owner_must_be_an_email(db):
    with pytest.raises(CommandError, match="email"):
        run("acme", "--owner", "alice")


def test_the_owner_is_required(db):
    with pytest.raises(CommandError):
        call_command("create_tenant", "acme")


@pytest.mark.django_db
def test_a_new_tenant_can_deploy_the_hello_template_on_its_trial_credit():
    """The README's first deployment must work for a tenant made by create_tenant."""
    from tests.conftest import client_for

    call_command("load_catalog", verbosity=0)
    call_command("create_tenant", "newco", "--owner", "new@example.com", stdout=StringIO())
    tenant = Tenant.objects.get(slug="newco")
    assert tenant_balance(tenant=tenant) > 0  # the trial credit, the ledger's first entry
    owner = tenant.memberships.get().user
    response = client_for(owner, tenant="newco").post(
        "/api/v1/deployments", {"name": "hi", "template_id": "hello", "gpus_per_container": 0, "replica_count": 1},
        format="json")
    assert response.status_code == 201, response.content
