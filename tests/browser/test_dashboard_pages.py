"""Every main page in a real browser: signup, the empty state, the form and its errors, a
deployment, billing, members, API access; the other tenant's 404 and a member's 403."""

from __future__ import annotations

import pytest

from tests.browser.conftest import sign_up

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_signup_lands_on_an_empty_state_and_every_page_renders(watched):
    w = watched()
    w.page.goto("/")
    w.page.get_by_role("link", name="Sign up").first.wait_for()
    w.shoot("landing")
    page = sign_up(w, "carol@example.com")
    assert "No deployments yet" in page.inner_text("#rows")
    w.shoot("deployments-empty")

    page.goto("/deployments/new/")
    page.locator("label.tcard", has_text="Hello (CPU)").click()
    assert page.input_value("#traffic_port") == "8080"
    page.locator("#estimate").get_by_text("on cpu-small").wait_for()  # the estimate followed the card
    w.shoot("new-deployment")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*-*/")
    page.get_by_role("heading", name="Logs").wait_for()
    w.shoot("deployment")

    page.goto("/deployments/")
    page.locator("#rows a").first.wait_for()
    w.shoot("deployments")
    for path, name in [("/billing/", "billing"), ("/members/", "members"), ("/api-access/", "api-access")]:
        page.goto(path)
        w.shoot(name)
    page.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create client").click()
    assert page.get_by_test_id("client-secret").input_value()
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("heading", name="You are logged out").wait_for()
    page.goto("/deployments/")
    page.wait_for_url("**/accounts/login/**")
    page.get_by_label("Email").fill("carol@example.com")
    page.get_by_label("Password").fill("a-long-pass-phrase-9")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/deployments/")


def test_a_form_with_bad_input_shows_the_field_errors(watched):
    w = watched()
    page = sign_up(w, "dan@example.com")
    page.goto("/deployments/new/")
    page.get_by_label("My own image").check()
    page.fill("#image_url", "not an image ref!!")
    page.fill("#replica_count", "0")
    page.fill("#traffic_port", "70000")
    page.get_by_role("button", name="Deploy").click()
    for field in ("image_url", "replica_count", "traffic_port"):
        assert page.locator(f"#{field}-errors").is_visible(), field
        assert page.get_attribute(f"#{field}", "aria-invalid") == "true"
    w.shoot("new-deployment-errors")


def test_another_tenants_page_is_a_404_and_a_member_gets_a_403(watched, web):
    from accounts.models import Membership, Tenant
    from django.contrib.auth import get_user_model

    owner = watched()
    page = sign_up(owner, "erin@example.com")
    page.goto("/deployments/new/")
    page.locator("label.tcard", has_text="Hello (CPU)").click()
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*-*/")
    deployment_url = page.url

    stranger = watched()
    sign_up(stranger, "frank@example.com")
    response = stranger.page.goto(deployment_url)
    assert response.status == 404
    stranger.errors.clear()  # the 404 itself is logged by the browser as a failed load

    member = watched()
    sign_up(member, "gina@example.com")
    tenant = Tenant.objects.get(slug="u-erin")
    Membership.objects.create(user=get_user_model().objects.get(username="gina@example.com"), tenant=tenant,
                              role="member")
    member.page.goto("/deployments/")
    with member.page.expect_navigation():
        member.page.select_option("#tenant-switch", label=f"{tenant.name} (member)")
    assert member.page.goto(deployment_url).status == 200
    response = member.page.goto("/api-access/")
    assert response.status == 403 and "'member'" in member.page.inner_text("main")
    member.errors.clear()
    member.shoot("forbidden")
