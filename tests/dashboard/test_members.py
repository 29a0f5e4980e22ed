from __future__ import annotations

import re

from django.core import mail

from accounts.models import Invitation, Membership
from tests.dashboard.conftest import browser_for
from tests.factories import UserFactory


def _link(message) -> str:
    return re.search(r"http://testserver(/invitations/[^/\s]+/)", message.body).group(1)


def test_an_owner_invites_and_the_invitee_accepts(alice_browser, acme):
    alice_browser.post("/members/", {"email": "Dave@Example.com", "role": "admin"})
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dave@example.com"]
    dave = UserFactory(username="dave@example.com", email="dave@example.com")
    response = browser_for(dave).post(_link(mail.outbox[0]))
    assert response.status_code == 302
    assert Membership.objects.get(tenant=acme, user=dave).role == "admin"


def test_an_invitation_works_once_and_only_for_its_address(alice_browser, acme):
    alice_browser.post("/members/", {"email": "dave@example.com", "role": "member"})
    link = _link(mail.outbox[0])
    eve = UserFactory(username="eve@example.com", email="eve@example.com")
    assert browser_for(eve).post(link).status_code == 403
    dave = UserFactory(username="dave@example.com", email="dave@example.com")
    assert browser_for(dave).post(link).status_code == 302
    assert browser_for(dave).post(link).status_code == 404


def test_an_invitation_link_asks_a_visitor_to_log_in(alice_browser, client):
    alice_browser.post("/members/", {"email": "dave@example.com", "role": "member"})
    response = client.get(_link(mail.outbox[0]))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_only_the_token_hash_is_stored(alice_browser):
    alice_browser.post("/members/", {"email": "dave@example.com", "role": "member"})
    token = _link(mail.outbox[0]).split("/")[2]
    assert not Invitation.objects.filter(token_hash=token).exists()


def test_a_member_cannot_invite_or_remove(bob_browser, alice, acme):
    assert bob_browser.post("/members/", {"email": "x@example.com", "role": "member"}).status_code == 403
    owner = Membership.objects.get(tenant=acme, user=alice)
    response = bob_browser.post(f"/members/{owner.pk}/remove/")
    assert response.status_code == 403 and b"member" in response.content
    assert Membership.objects.filter(pk=owner.pk).exists() and not Invitation.objects.exists()


def test_an_admin_cannot_make_an_owner(acme, bob):
    Membership.objects.filter(user=bob, tenant=acme).update(role="admin")
    admin = browser_for(bob)
    admin.post("/tenant/", {"tenant": "acme"})
    response = admin.post("/members/", {"email": "x@example.com", "role": "owner"}, follow=True)
    assert b"only an owner can make another owner" in response.content and not Invitation.objects.exists()


def test_an_owner_removes_a_member_but_not_the_last_owner(alice_browser, alice, bob, acme):
    member = Membership.objects.get(tenant=acme, user=bob)
    alice_browser.post(f"/members/{member.pk}/remove/")
    assert not Membership.objects.filter(pk=member.pk).exists()
    owner = Membership.objects.get(tenant=acme, user=alice)
    response = alice_browser.post(f"/members/{owner.pk}/remove/", follow=True)
    assert Membership.objects.filter(pk=owner.pk).exists() and b"at least one owner" in response.content


def test_members_of_another_tenant_cannot_be_removed(mallory_browser, bob, acme):
    member = Membership.objects.get(tenant=acme, user=bob)
    mallory_browser.post(f"/members/{member.pk}/remove/")
    assert Membership.objects.filter(pk=member.pk).exists()
