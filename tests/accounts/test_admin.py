"""Tenants and memberships in the admin go through accounts' services: the rules they hold (a
tenant keeps an owner, an organisation's slug is never a personal one, a tenant's owner has a
confirmed address) hold here too, as a form error or a message, never a 500 and never done."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts.models import EmailConfirmation, Membership, Tenant
from accounts.services import email_mark_confirmed
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(UserFactory(username="ops@example.com", is_staff=True, is_superuser=True))
    return client


def _owner_of(tenant):
    return Membership.objects.get(tenant=tenant, role=Membership.Role.OWNER)


def _messages(response) -> str:
    return " ".join(str(m) for m in get_messages(response.wsgi_request))


def test_deleting_the_last_owner_is_refused_with_a_message(operator, alice, acme):
    owner = _owner_of(acme)
    response = operator.post(reverse("admin:accounts_membership_delete", args=[owner.pk]), {"post": "yes"},
                             follow=True)
    assert response.status_code == 200
    assert "keeps at least one owner" in _messages(response)
    assert "deleted successfully" not in _messages(response)
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_the_bulk_delete_skips_the_last_owner_and_deletes_the_rest(operator, alice, bob, acme):
    owner, member = _owner_of(acme), Membership.objects.get(user=bob)
    response = operator.post(reverse("admin:accounts_membership_changelist"), {
        "action": "delete_selected", "_selected_action": [owner.pk, member.pk]}, follow=True)
    assert response.status_code == 200
    assert "keeps at least one owner" in _messages(response)
    assert list(Membership.objects.filter(tenant=acme)) == [owner]


def test_an_owner_is_deleted_when_another_remains(operator, alice, acme):
    second = MembershipFactory(tenant=acme, role=Membership.Role.OWNER)
    response = operator.post(reverse("admin:accounts_membership_delete", args=[second.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=second.pk).exists()


def test_demoting_the_last_owner_is_a_form_error(operator, alice, acme):
    owner = _owner_of(acme)
    response = operator.post(reverse("admin:accounts_membership_change", args=[owner.pk]), {"role": "admin"})
    assert response.status_code == 200
    assert b"keeps at least one owner" in response.content
    assert Membership.objects.get(pk=owner.pk).role == "owner"


def test_a_role_change_that_keeps_an_owner_is_saved(operator, alice, bob, acme):
    member = Membership.objects.get(user=bob)
    response = operator.post(reverse("admin:accounts_membership_change", args=[member.pk]), {"role": "owner"})
    assert response.status_code == 302
    owner = Membership.objects.get(user=alice)
    demoted = operator.post(reverse("admin:accounts_membership_change", args=[owner.pk]), {"role": "member"})
    assert demoted.status_code == 302
    assert dict(Membership.objects.filter(tenant=acme).values_list("user__username", "role")) == {
        "alice@example.com": "member", "bob@example.com": "owner"}


def test_a_member_is_added_through_the_service(operator, acme):
    user = UserFactory(username="carol@example.com")
    response = operator.post(reverse("admin:accounts_membership_add"),
                             {"user": user.pk, "tenant": acme.pk, "role": "admin"})
    assert response.status_code == 302, response.content[:2000]
    assert Membership.objects.get(user=user, tenant=acme).role == "admin"


def test_a_tenant_is_made_by_tenant_create_with_its_owner_and_trial(operator, settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    owner = UserFactory(username="dana@example.com")
    email_mark_confirmed(user=owner, how=EmailConfirmation.How.OPERATOR)
    response = operator.post(reverse("admin:accounts_tenant_add"),
                             {"slug": "initech", "name": "Initech", "owner": "dana@example.com"})
    assert response.status_code == 302, response.content[:2000]
    tenant = Tenant.objects.get(slug="initech")
    assert _owner_of(tenant).user == owner
    assert tenant.ledger_entries.get().idempotency_key == "trial"


def test_a_personal_slug_or_an_unconfirmed_owner_is_a_form_error(operator):
    unconfirmed = UserFactory(username="eve@example.com")
    response = operator.post(reverse("admin:accounts_tenant_add"),
                             {"slug": "initech", "name": "Initech", "owner": unconfirmed.username})
    assert response.status_code == 200 and b"confirmed address" in response.content
    email_mark_confirmed(user=unconfirmed, how=EmailConfirmation.How.OPERATOR)
    response = operator.post(reverse("admin:accounts_tenant_add"),
                             {"slug": "u-initech", "name": "Initech", "owner": unconfirmed.username})
    assert response.status_code == 200 and b"for personal tenants" in response.content
    assert not Tenant.objects.filter(name="Initech").exists()


def test_quotas_change_through_the_service_and_the_slug_stays(operator, acme):
    response = operator.post(reverse("admin:accounts_tenant_change", args=[acme.pk]), {
        "slug": "renamed", "name": "Acme Inc", "max_gpus": "3", "max_deployments": "4", "max_volume_gib": "800",
        "spend_limit": ""})
    assert response.status_code == 302, response.content[:2000]
    acme.refresh_from_db()
    assert (acme.slug, acme.name, acme.max_gpus, acme.max_deployments, acme.max_volume_gib) == (
        "acme", "Acme Inc", 3, 4, 800)
