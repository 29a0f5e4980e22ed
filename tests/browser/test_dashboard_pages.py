"""Every main page in a real browser: signup, the empty state, the form and its errors, a
deployment, billing, members, API access; the other tenant's 404 and a member's 403."""

from __future__ import annotations

import pytest

from tests.browser.conftest import sign_up
from tests.e2e.stack import wait_for

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


def test_an_endpoint_key_is_made_copied_and_revoked_on_the_deployment_page(watched):
    w = watched()
    w.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = sign_up(w, "hana@example.com")
    page.goto("/deployments/new/")
    page.locator("label.tcard", has_text="Hello (CPU)").click()
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*-*/")
    url = page.get_by_test_id("endpoint").first.get_attribute("href")
    page.get_by_role("button", name="Copy URL").click()
    assert wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == url, timeout=10, what="the URL copied")
    assert "No requests through the gateway in the last hour" in page.inner_text("#requests")

    page.get_by_label("New key's name").fill("laptop")
    page.get_by_role("button", name="Make key").click()
    secret = page.get_by_test_id("key-secret").input_value()
    assert secret.startswith("gk_") and "It is not shown again" in page.inner_text("#endpoint-keys")
    page.get_by_role("button", name="Copy secret").click()
    page.get_by_role("button", name="Copied").wait_for()  # outside the polled part: it stays
    assert page.evaluate("navigator.clipboard.readText()") == secret
    w.shoot("deployment-endpoint-key")

    page.goto(page.url.split("/keys/")[0] + "/")
    assert secret not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("row", name="laptop").get_by_role("button", name="Revoke").click()
    page.get_by_text("Revoked the key laptop").wait_for()
    assert "No keys yet." in page.inner_text("#endpoint-keys")
