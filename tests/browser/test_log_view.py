"""The live log view: 5,000 lines arriving while the page is open all appear, in order, as
inert text, and the page still answers a click on Pause meanwhile."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.browser.conftest import sign_up

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

HOSTILE = ["<img src=x onerror=window.__pwned=1>", "\x1b[31mred\x1b[0m", "bad utf-8: \ufffd\ufffd", "<script>window.__pwned=1</script>"]
LINES, BATCH = 5000, 250


def test_five_thousand_lines_all_show_in_order_and_pause_still_answers(watched):
    from cloud.deployments.services.logs import logs_store
    from protocol.wire import LogEntry
    from tests.deployments.factories import deployment_for, place_running

    w = watched()
    page = sign_up(w, "logs@example.com")
    from accounts.models import Tenant

    deployment = deployment_for(Tenant.objects.get(slug="u-logs"), name="chatty")
    (replica,) = place_running(deployment)
    page.goto(f"/deployments/{deployment.pk}/")
    page.get_by_text("live", exact=True).wait_for()

    now = time.time()
    clicked_at = None
    for start in range(1, LINES + 1, BATCH):
        lines = [LogEntry(seq=n, ts=now + n / 1000, stream="stdout",
                          message=f"line {n:05d} {HOSTILE[n % len(HOSTILE)]}") for n in range(start, start + BATCH)]
        # Another thread: publishing goes through async_to_sync, which refuses the thread in
        # which Playwright's own event loop runs. Each store commits and publishes, as an agent's would.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(_store, logs_store, replica, lines).result()
        if start == 1 + BATCH * 8:  # mid-stream: the button must answer promptly
            began = time.monotonic()
            page.get_by_role("button", name="Pause").click(timeout=5000)
            page.get_by_role("button", name="Resume").wait_for(timeout=5000)
            clicked_at = time.monotonic() - began
            page.get_by_role("button", name="Resume").click()
    # A frozen page would miss this by far; the margin is for a loaded two-core test machine.
    assert clicked_at is not None and clicked_at < 5

    # Locators, not page.evaluate: evaluating a string in the page is what the CSP forbids.
    view = page.locator(".log-view .line")
    _until(lambda: view.count() >= LINES)
    texts = view.all_inner_texts()
    numbers = [int(t.split("line ", 1)[1][:5]) for t in texts if "line " in t]
    assert numbers == list(range(1, LINES + 1))
    assert page.locator(".log-view img, .log-view script").count() == 0
    assert any("<img src=x" in t for t in texts) and not any("\x1b[" in t for t in texts)
    assert any("[31m" not in t and "red" in t for t in texts)

    page.fill("#log-search", "line 04999")
    _until(lambda: page.locator(".log-view .line:not([hidden])").count() == 1)
    page.fill("#log-search", "")
    w.shoot("deployment-logs")


def _store(logs_store, replica, lines):
    from django.db import connection

    try:
        logs_store(replica=replica, lines=lines)
    finally:
        connection.close()


def _until(check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
