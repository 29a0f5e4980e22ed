from __future__ import annotations

from django.test import Client

from cloud.dashboard.csp import POLICY


def test_it_shows_sign_up_and_log_in_to_visitors(db):
    response = Client().get("/")
    assert response.status_code == 200
    assert b'href="/accounts/signup/"' in response.content and b'href="/accounts/login/"' in response.content


def test_it_sends_a_csp_without_inline_scripts(db):
    response = Client().get("/")
    assert response["Content-Security-Policy"] == POLICY
    assert "unsafe-inline" not in POLICY
    assert b"<script>" not in response.content and b"<style>" not in response.content


def test_it_sends_signed_in_users_to_their_deployments(alice_browser):
    response = alice_browser.get("/")
    assert response.status_code == 302 and response["Location"] == "/deployments/"


def test_signup_signs_you_in_and_lands_on_deployments(db):
    client = Client()
    response = client.post("/accounts/signup/", {"email": "new@example.com", "password1": "a-long-pass-phrase-9",
                                                 "password2": "a-long-pass-phrase-9"})
    assert response.status_code == 302 and response["Location"] == "/deployments/"
    page = client.get("/deployments/")
    assert page.status_code == 200 and b"No deployments yet" in page.content


def test_login_page_renders_with_the_dashboard_stylesheet(db):
    response = Client().get("/accounts/login/")
    assert response.status_code == 200 and b"/static/dashboard/app.css" in response.content


def test_pages_need_a_login(db):
    response = Client().get("/deployments/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_tenant_switch_ignores_a_tenant_you_are_not_in(alice_browser, evil):
    alice_browser.post("/tenant/", {"tenant": "evil"})
    page = alice_browser.get("/deployments/")
    assert page.context["current_tenant"].slug == "acme"
