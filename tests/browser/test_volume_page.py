"""The Volumes page in a real browser (no console error, no off-site request under the CSP):
make a volume, attach it in the new-deployment form, see it on the deployment page and as
attached on the Volumes page, and be told why it cannot be deleted while attached."""

from __future__ import annotations

import pytest

from tests.browser.conftest import sign_up

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_a_volume_is_made_attached_and_kept_from_deletion_while_attached(watched):
    w = watched()
    page = sign_up(w, "vera@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Volumes").click()
    page.wait_for_url("**/volumes/")
    assert "No volumes yet" in page.inner_text("#rows")
    page.get_by_label("Name").fill("models")
    page.get_by_label("Size (GiB)").fill("20")
    page.get_by_role("button", name="Create volume").click()
    row = page.get_by_test_id("volume").filter(has_text="models")
    row.wait_for()
    assert "20 GiB" in row.inner_text() and "pending" in row.inner_text()

    page.goto("/deployments/new/")
    page.locator("label.tcard", has_text="Hello (CPU)").click()
    page.select_option("#volume_id_0", index=1)  # the only volume, after "None"
    page.fill("#volume_path_0", "/data")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*-*/")
    volume_row = page.get_by_test_id("deployment-volume")
    volume_row.wait_for()
    assert "/data" in volume_row.inner_text() and "rw" in volume_row.inner_text()
    deployment_name = page.get_by_role("heading", level=1).inner_text()

    volume_row.get_by_role("link", name="models").click()
    page.wait_for_url("**/volumes/#volume-*")
    row = page.get_by_test_id("volume").filter(has_text="models")
    assert deployment_name in row.inner_text()
    w.shoot("volumes")
    row.get_by_role("link", name="Delete").click()
    page.get_by_role("heading", name="Delete the volume models?").wait_for()
    assert deployment_name in page.get_by_test_id("in-use").inner_text()
    page.get_by_role("button", name="Delete models and erase its data").click()
    assert "is attached to" in page.get_by_test_id("delete-problem").inner_text()
    page.get_by_role("link", name="Keep it").click()
    page.wait_for_url("**/volumes/")
    assert "models" in page.inner_text("#rows")
