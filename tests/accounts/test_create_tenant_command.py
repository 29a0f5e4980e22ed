import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.models import Membership, Tenant
from accounts.selectors import email_confirmed, personal_tenant_for
from accounts.services import email_mark_confirmed, user_signup
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
    email_mark_confirmed(user=user, how="link")
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


def test_an_existing_account_with_an_unconfirmed_email_gets_no_tenant(db, settings):
    """Mallory signed up first with Alice's address; the operator then makes Alice's company."""
    settings.TENANT_DEFAULT_BALANCE = "10"
    squatter, _ = user_signup(email="alice@example.com", password="mallorys-own-pass-9", self_service=True)
    with pytest.raises(CommandError, match="never confirmed"):
        run("acme", "--owner", "alice@example.com")
    assert not Tenant.objects.filter(slug="acme").exists()
    assert not Membership.objects.filter(user=squatter, tenant__personal=False).exists()


def test_the_refusal_exits_non_zero_from_the_command_line(transactional_db):
    import os
    import subprocess
    import sys

    from django.db import connection

    user_signup(email="alice@example.com", password=None, self_service=True)
    db = connection.settings_dict
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    # A production-like environment (manage.py may refuse to start on development secrets).
    from cryptography.fernet import Fernet

    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": Fernet.generate_key().decode() * 2,
           "FERNET_KEYS": Fernet.generate_key().decode()}
    done = subprocess.run([sys.executable, "manage.py", "create_tenant", "acme", "--owner", "alice@example.com"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "never confirmed" in done.stderr
    assert done.stdout == ""
    assert not Tenant.objects.filter(slug="acme").exists()


def test_an_account_the_command_makes_counts_as_confirmed(db):
    run("acme", "--owner", "new@example.com", "--password", "s3cret-enough-pass")
    user = get_user_model().objects.get(username="new@example.com")
    assert email_confirmed(user=user)
    # ...so a second tenant for the same owner is no problem.
    result, _ = run("acme-labs", "--owner", "new@example.com")
    assert result["owner_created"] is False
