"""Chromium renders /api/v1/docs/ (Swagger UI) and /api/v1/redoc/ with the operations listed,
with every request to another host refused (the `watched` fixture fails on any)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_swagger_ui_lists_the_operations_offline(watched):
    w = watched()
    w.page.goto("/api/v1/docs/")
    w.page.locator(".opblock-summary-path", has_text="/api/v1/deployments").first.wait_for(timeout=30000)
    assert w.page.locator(".opblock").count() > 10
    w.shoot("api-docs-swagger")


def test_redoc_lists_the_operations_offline(watched):
    w = watched()
    # ReDoc's bundle always asks cdn.redoc.ly for its "API docs by Redocly" logo (no option
    # turns it off); refused, the image hides itself and nothing else is missing.
    w.tolerated.add("https://cdn.redoc.ly/redoc/logo-mini.svg")
    w.page.goto("/api/v1/redoc/")
    w.page.get_by_role("heading", name="Create a deployment").first.wait_for(timeout=60000)
    w.shoot("api-docs-redoc")
