"""The whole customer path in a browser, on a real agent: sign up, deploy `hello` from its
template card, watch it reach running and its log stream in, open its endpoint, stop it, see
its cost."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import share_plane, sign_up
from tests.e2e.conftest import catalog, make_node, plane, wait_for  # noqa: F401  (fixtures)
from tests.agent.conftest_images import local_registry  # noqa: F401  (fixture)
from tests.agent.conftest_vmm import vmm_kit  # noqa: F401  (fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def web(plane, settings):  # noqa: F811  (the browser fixtures' plane is the e2e one, with agents)
    from channels.layers import channel_layers

    share_plane(settings, plane)
    yield plane
    channel_layers.backends.clear()


def test_sign_up_deploy_hello_watch_it_run_open_it_stop_it(watched, make_node):  # noqa: F811
    from nodes.models import Node

    node = make_node("browser-cpu-1")
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    w = watched()
    page = sign_up(w, "hana@example.com")
    page.get_by_role("link", name="Start one from a template").click()
    page.locator("label.tcard", has_text="Hello (CPU)").click()
    page.locator("#estimate").get_by_text("on cpu-small").wait_for()
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*-*/")

    page.get_by_test_id("status").get_by_text("running").wait_for(timeout=240_000)  # the 3 s poll
    page.locator(".log-view .line", has_text="Hello from Gantry").first.wait_for(timeout=60_000)
    assert page.get_by_test_id("endpoint").first.get_attribute("href").startswith("https://")  # the gateway's name
    link = page.get_by_test_id("replica-endpoint").first  # the node's direct address: no gateway runs here
    url = link.get_attribute("href")
    assert url.startswith(f"http://{node.public_address}:")
    assert "Hello from Gantry" in wait_for(lambda: "Hello" in (t := _get(url)) and t, timeout=60, what="endpoint")
    w.shoot("deployment-running")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop").click()
    page.get_by_test_id("status").get_by_text("stopped").wait_for(timeout=90_000)
    cost = page.get_by_test_id("cost").inner_text()
    assert cost.startswith("$") and float(cost[1:]) > 0


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError as exc:
        return f"<{type(exc).__name__}>"
