"""Self-service signups get their trial credit when they confirm their email; operators'
tenants get it at once; personal tenants never take an organisation's slug."""

from __future__ import annotations

import re
from io import StringIO

from django.core import mail
from django.core.management import call_command
from django.test import Client

from accounts.models import Tenant
from accounts.selectors import personal_tenant_for
from accounts.services import user_signup
from billing.selectors import tenant_balance

GOOD = {"email": "acme@example.com", "password1": "a-long-pass-phrase-9", "password2": "a-long-pass-phrase-9"}


def _signup(client) -> str:
    client.post("/accounts/signup/", GOOD)
    return re.search(r"http://testserver(/accounts/confirm/\S+/)", mail.outbox[-1].body).group(1)


def test_signup_withholds_the_trial_until_the_email_is_confirmed(db, settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    client = Client()
    link = _signup(client)
    tenant = Tenant.objects.get(personal=True)
    assert tenant_balance(tenant=tenant) == 0
    assert client.get(link).status_code == 200
    assert tenant_balance(tenant=tenant) == 10
    client.get(link)  # twice: still one trial credit
    assert tenant_balance(tenant=tenant) == 10


def test_a_forged_link_grants_nothing(db, settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    client = Client()
    link = _signup(client)
    assert client.get(link[:-3] + "xx/").status_code == 400
    assert tenant_balance(tenant=Tenant.objects.get(personal=True)) == 0


def test_create_tenant_accounts_get_the_trial_at_once(db, settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    user, tenant = user_signup(email="ops@example.com", password=None)
    assert tenant_balance(tenant=tenant) == 10


def test_a_signup_never_takes_an_organisation_slug(db):
    client = Client()
    client.get(_signup(client))  # confirmed: an operator may make them an organisation's owner
    call_command("create_tenant", "acme", "--owner", "acme@example.com", stdout=StringIO(), stderr=StringIO())
    assert Tenant.objects.get(slug="acme").personal is False
    assert Tenant.objects.get(personal=True).slug == "u-acme"


def test_the_operators_slug_wins_over_an_old_personal_tenant(db):
    user, personal = user_signup(email="acme@example.com", password=None)
    Tenant.objects.filter(pk=personal.pk).update(slug="acme")  # as signups named them before
    call_command("create_tenant", "acme", "--owner", "boss@example.com", stdout=StringIO(), stderr=StringIO())
    assert Tenant.objects.get(slug="acme").personal is False
    assert personal_tenant_for(user=user).slug == "u-acme"


def test_organisation_slugs_cannot_use_the_personal_prefix(db):
    out, err = StringIO(), StringIO()
    try:
        call_command("create_tenant", "u-acme", "--owner", "boss@example.com", stdout=out, stderr=err)
    except Exception as exc:  # CommandError
        assert "personal tenants" in str(exc)
    else:
        raise AssertionError("u-acme was accepted")


def test_the_dashboard_says_the_trial_waits_and_resends_the_link(db, settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    client = Client()
    link = _signup(client)
    assert b"Confirm your email" in client.get("/deployments/").content
    client.post("/accounts/confirm/resend/")
    assert len(mail.outbox) == 2 and "/accounts/confirm/" in mail.outbox[1].body
    client.get(link)
    assert b"Confirm your email" not in client.get("/deployments/").content


def test_the_trial_credit_needs_a_confirmed_email_whatever_made_the_tenant(db, settings):
    from accounts.confirmation import confirmation_token, email_confirm
    from accounts.selectors import email_confirmed
    from accounts.services import tenant_create

    settings.TENANT_DEFAULT_BALANCE = "10"
    user, personal = user_signup(email="carol@example.com", password=None, self_service=True)
    assert not email_confirmed(user=user)
    org = tenant_create(slug="carolco", owner=user)  # any path that makes a tenant for her
    assert tenant_balance(tenant=org) == 0 and tenant_balance(tenant=personal) == 0
    email_confirm(token=confirmation_token(user))
    assert email_confirmed(user=user)
    assert tenant_balance(tenant=personal) == 10
    assert tenant_balance(tenant=tenant_create(slug="carolco-2", owner=user)) == 10


def test_changing_the_address_undoes_the_confirmation(db):
    from accounts.selectors import email_confirmed

    user, _ = user_signup(email="ops@example.com", password=None)  # an operator's: confirmed
    assert email_confirmed(user=user)
    user.email = user.username = "someone-else@example.com"
    user.save()
    assert not email_confirmed(user=user)
