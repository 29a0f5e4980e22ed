"""`gateway run --http-serves-routes`: the HTTP bind serves the routes, as HTTPS does, for an
operator whose TLS ends in front of the gateway; X-Forwarded-Proto says http."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.conftest import GATEWAY_IP, HOST_IP, HTTP_PORT, problem, wait_for
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
PORT = 18061
KEY = "gk_plain-http-key"


@pytest.fixture(scope="module")
def gateway_args() -> tuple[str, ...]:
    return ("--http-serves-routes",)


@pytest.fixture(scope="module", autouse=True)
def routes(gateway, backends):
    backends.http(PORT, "plain")
    gateway.push(table(route("open", backend(GATEWAY_IP, PORT)),
                       route("closed", backend(GATEWAY_IP, PORT), access="private", keys=(KEY,)),
                       route("small", backend(GATEWAY_IP, PORT), max_body_bytes=10),
                       route("off", unavailable="stopped")))


def get(host: str, path: str = "/", **kwargs) -> httpx.Response:
    return httpx.request(kwargs.pop("method", "GET"), f"http://{GATEWAY_IP}:{HTTP_PORT}{path}",
                         headers={"Host": host, **kwargs.pop("headers", {})}, timeout=10, **kwargs)


def test_plain_http_serves_a_route_with_the_forwarding_headers_of_plain_http():
    response = get("Open.gantry.localhost:80", "/a?b=c", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    assert response.json()["path"] == "/a?b=c"
    assert (seen["x-forwarded-proto"], seen["x-forwarded-for"], seen["x-forwarded-host"]) == \
        ("http", HOST_IP, "open.gantry.localhost")


def test_plain_http_applies_the_same_rules_as_https():
    assert problem(get("nobody.gantry.localhost"))["status"] == 404
    assert get("closed.gantry.localhost").status_code == 401
    with_key = get("closed.gantry.localhost", headers={"Gantry-Key": KEY})
    assert with_key.status_code == 200
    assert "gantry-key" not in {name.lower() for name, _ in with_key.json()["headers"]}
    assert get("small.gantry.localhost", method="POST", content=b"x" * 11).status_code == 413
    off = get("off.gantry.localhost")
    assert (off.status_code, off.headers["retry-after"]) == (503, "5")
    assert "stopped" in problem(off)["detail"]


def test_plain_http_requests_are_counted_in_the_stats(gateway):
    def counted() -> int:
        return sum(m["requests"] for m in gateway.control.get("/v1/stats").json()["minutes"] if m["label"] == "open")

    before = counted()
    for _ in range(3):
        get("open.gantry.localhost", "/counted")
    wait_for(lambda: counted() >= before + 3, "the plain HTTP requests reached the stats")
