"""Browser tests: Debian's chromium (never a downloaded browser) driven by Playwright against a
live daphne + Celery (tests/e2e/conftest.py's Plane), with screenshots of each page at desktop
and phone width written to docs/screenshots/.

Every page is watched for console errors and for any request to another host: the dashboard
and the API docs must work on a machine with no internet, so such a request fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import Plane

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

if not Path(CHROMIUM).exists():  # scripts/ensure-debs.sh installs it; say so instead of failing obscurely
    pytest.skip(f"no chromium at {CHROMIUM} (make sysdeps installs Debian's)", allow_module_level=True)


def share_plane(settings, plane) -> None:
    """This process publishes and caches where the plane's daphne reads (its own prefixes), so
    a log line a test stores reaches a live tail exactly as an agent's would."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {
        **settings.CHANNEL_LAYERS["default"]["CONFIG"], "prefix": plane.env["CHANNELS_PREFIX"]}}}
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": plane.env["CACHE_PREFIX"]}}
    channel_layers.backends.clear()


@pytest.fixture
def web(transactional_db, tmp_path, settings):
    from channels.layers import channel_layers
    from django.core.management import call_command

    call_command("load_catalog", verbosity=0)
    plane = Plane(tmp_path, ACCOUNT_THROTTLE_ATTEMPTS="1000")
    share_plane(settings, plane)
    yield plane
    channel_layers.backends.clear()
    plane.stop()
    for name in plane.procs:
        print(f"--- {name}.log (tail)\n{plane.log(name)}")


@pytest.fixture
def chromium(web, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, and Django then refuses the
    # test's own ORM calls as "async unsafe". They are not: nothing else runs in the loop.
    # Only while a browser is up (after `web` set up the database), never for other tests.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Watched:
    """A browser context with its console errors and off-site requests collected."""

    def __init__(self, browser, base_url: str, viewport=DESKTOP):
        self.context = browser.new_context(base_url=base_url, viewport=viewport)
        self.errors: list[str] = []
        self.offsite: list[str] = []
        self.tolerated: set[str] = set()  # off-site requests a test knows about and accepts
        host = urlparse(base_url).hostname

        def route(r):
            if urlparse(r.request.url).hostname not in (host, None):
                if r.request.url in self.tolerated:
                    self.tolerated_seen = True
                else:
                    self.offsite.append(r.request.url)
                return r.abort()
            return r.continue_()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def new_page(self):
        page = self.context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def shoot(self, name: str, page=None) -> None:
        """`name`-desktop.png and `name`-phone.png of the page as it is now."""
        page = page or self.page
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = page.viewport_size
        page.set_viewport_size(DESKTOP)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
        page.set_viewport_size(size)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(chromium, web):
    made: list[Watched] = []

    def make(viewport=DESKTOP) -> Watched:
        made.append(Watched(chromium, web.url, viewport))
        return made[-1]

    yield make
    for w in made:
        if getattr(w, "tolerated_seen", False):  # the refused tolerated request's own console line
            w.errors = [e for e in w.errors if e != "Failed to load resource: net::ERR_FAILED"]
        # A log socket whose handshake is cut while its page is left (seen once in CI under
        # load) is not a page error: logs.js reconnects after its cursor, and the log-view
        # tests check that no line is lost. Any other socket failure still fails the test.
        w.errors = [e for e in w.errors if not (e.startswith("WebSocket connection to ") and "/logs?" in e
                                                and e.endswith("Error during WebSocket handshake: net::ERR_CONNECTION_RESET"))]
    problems = [(w.errors, w.offsite) for w in made if w.errors or w.offsite]
    for w in made:
        w.close()
    assert not problems, f"console errors or off-site requests: {problems}"


def sign_up(w: Watched, email: str, password: str = "a-long-pass-phrase-9", *, confirm: bool = True):
    page = w.page
    page.goto("/accounts/signup/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password (again)").fill(password)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/deployments/")
    if confirm:
        # The link the confirmation mail carries (the plane mails to its console): the trial
        # credit comes with it, and without credit nothing can be deployed.
        from django.contrib.auth import get_user_model

        from accounts.confirmation import confirmation_token

        page.goto(f"/accounts/confirm/{confirmation_token(get_user_model().objects.get(username=email))}/")
        page.get_by_role("heading", name="Email confirmed").wait_for()
        page.goto("/deployments/")
    return page
