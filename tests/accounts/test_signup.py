import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Membership
from accounts.selectors import personal_tenant_for
from tests.factories import UserFactory

GOOD = {"email": "Carol@Example.com", "password1": "a-long-enough-passphrase", "password2": "a-long-enough-passphrase"}


def test_the_form_renders_with_a_csrf_token(client, db):
    response = client.get("/accounts/signup/")
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_signup_creates_a_user_with_a_personal_tenant_and_logs_in(client, db):
    response = client.post("/accounts/signup/", GOOD)
    assert response.status_code == 302
    assert response["Location"] == "/deployments/"
    user = get_user_model().objects.get(username="carol@example.com")
    assert user.email == "carol@example.com" and user.check_password(GOOD["password1"])
    tenant = personal_tenant_for(user=user)
    assert tenant is not None and tenant.personal and tenant.slug == "u-carol"
    assert Membership.objects.get(user=user, tenant=tenant).role == "owner"
    assert int(client.session["_auth_user_id"]) == user.pk


def test_a_taken_slug_gets_a_suffix(client, db):
    client.post("/accounts/signup/", GOOD)
    Client().post("/accounts/signup/", {**GOOD, "email": "carol@other.example"})
    user = get_user_model().objects.get(username="carol@other.example")
    assert personal_tenant_for(user=user).slug == "u-carol-2"


def test_an_existing_email_is_refused(client, db):
    UserFactory(username="carol@example.com")
    response = client.post("/accounts/signup/", GOOD)
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert get_user_model().objects.filter(username="carol@example.com").count() == 1


@pytest.mark.parametrize("changes,message", [
    ({"password2": "something-else-entirely"}, b"The two passwords differ"),
    ({"password1": "short", "password2": "short"}, b"too short"),
    ({"password1": "password123", "password2": "password123"}, b"too common"),
    ({"email": "not-an-email"}, b"valid email"),
    ({"email": ""}, b"required"),
])
def test_bad_input_shows_the_form_again(client, db, changes, message):
    response = client.post("/accounts/signup/", {**GOOD, **changes})
    assert response.status_code == 200
    assert message in response.content
    assert not get_user_model().objects.exists()


def test_csrf_is_enforced(db):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/signup/", GOOD).status_code == 403
    assert not get_user_model().objects.exists()


def test_next_returns_to_a_page_on_this_site(client, db):
    response = client.post("/accounts/signup/?next=/o/authorize/%3Fclient_id%3Dx", GOOD)
    assert response["Location"] == "/o/authorize/?client_id=x"


def test_next_never_leaves_the_site(client, db):
    response = client.post("/accounts/signup/?next=https://evil.example/phish", GOOD)
    assert response["Location"] == "/deployments/"


def test_login_and_logout(client, db):
    UserFactory(username="dave@example.com")
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "dave@example.com", "password": "correct horse battery staple"})
    assert response.status_code == 302 and response["Location"] == "/deployments/"
    assert "_auth_user_id" in client.session
    response = client.post("/accounts/logout/")
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_a_wrong_password_does_not_log_in(client, db):
    UserFactory(username="dave@example.com")
    response = client.post("/accounts/login/", {"username": "dave@example.com", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
