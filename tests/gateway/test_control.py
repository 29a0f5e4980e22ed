"""The control API the plane pushes to: its token, its refusals, and the stats it keeps."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from gateway.control import MAX_BODY_BYTES
from tests.gateway.conftest import CONTROL_PORT, GATEWAY_IP, TOKEN, problem, wait_for
from tests.gateway.tables import backend, push_body, route, table, tcp_route

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
PORT = 18021
CONTROL = f"http://{GATEWAY_IP}:{CONTROL_PORT}"
ROUTES = table(route("counted", backend(GATEWAY_IP, PORT)), route("private", backend(GATEWAY_IP, PORT),
                                                                   access="private", keys=("gk_stats",)))


@pytest.fixture(scope="module", autouse=True)
def routes(gateway, backends):
    backends.http(PORT, "counted")
    return gateway.push(ROUTES)


def test_a_gateway_starts_serving_no_table_then_reports_the_pushed_digest(gateway, routes):
    assert routes["digest"] and routes["applied_at"].endswith("Z")
    assert gateway.control.get("/v1/routes").json() == routes


def test_the_same_table_again_changes_nothing(gateway, routes):
    assert gateway.push(ROUTES) == routes  # same digest, same applied_at: no reload


def test_healthz_needs_no_token():
    response = httpx.get(f"{CONTROL}/healthz")
    assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.parametrize("authorization", [None, "", "Bearer", f"Bearer {TOKEN}x", f"bearer {TOKEN}",
                                           f"Bearer {TOKEN[:-1]}", TOKEN, f"Basic {TOKEN}"])
@pytest.mark.parametrize("method,path", [("GET", "/v1/routes"), ("PUT", "/v1/routes"), ("GET", "/v1/stats")])
def test_a_missing_or_wrong_token_is_401(method, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request(method, f"{CONTROL}{path}", headers=headers, content=push_body(table()))
    assert response.status_code == 401
    assert problem(response)["title"] == "Unauthorized"


def test_a_malformed_table_is_400_naming_the_field_and_nothing_is_applied(gateway, client, routes):
    bad = table(route("counted", backend(GATEWAY_IP, PORT)), route("broken", backend("203.0.113.5", 0)))
    response = gateway.control.put("/v1/routes", content=push_body(bad))
    assert response.status_code == 400
    body = problem(response)
    assert body["errors"] == [{"field": "table.routes.0.backends.0.port", "message": "must be an integer from 1 to 65535",
                               "code": "invalid"}]
    assert gateway.control.get("/v1/routes").json() == routes
    assert client.get("private.gantry.localhost", headers={"Gantry-Key": "gk_stats"}).status_code == 200


def test_a_body_over_16_mib_is_413_before_it_is_read():
    with socket.create_connection((GATEWAY_IP, CONTROL_PORT), timeout=10) as conn:
        conn.sendall(f"PUT /v1/routes HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
        answer = conn.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_body_without_a_length_is_411(gateway):
    response = gateway.control.put("/v1/routes", content=iter([push_body(ROUTES)]))  # chunked
    assert response.status_code == 411


def test_unknown_paths_and_methods_are_problems(gateway):
    assert problem(gateway.control.get("/v1/nothing")).get("status") == 404
    response = gateway.control.delete("/v1/routes")
    assert response.status_code == 405 and response.headers["allow"] == "GET, PUT"
    assert problem(gateway.control.request("OPTIONS", "/v1/routes"))["status"] == 501


@pytest.mark.parametrize("raw", [b"NONSENSE\r\n\r\n", b"GET /v1/routes HTTP/9.9\r\n\r\n",
                                 b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"])
def test_a_request_http_server_cannot_parse_is_a_problem_document(raw):
    with socket.create_connection((GATEWAY_IP, CONTROL_PORT), timeout=10) as conn:
        conn.sendall(raw)
        answer = conn.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] in (400, 414, 505)


def _totals(gateway) -> dict[str, list[int]]:
    """Per label, over the minutes kept: [requests, errors, requests timed]."""
    by_label: dict[str, list[int]] = {}
    for minute in gateway.control.get("/v1/stats").json()["minutes"]:
        count = by_label.setdefault(minute["label"], [0, 0, 0])
        count[0] += minute["requests"]
        count[1] += minute["errors"]
        count[2] += sum(minute["latency_ms"].values())
    return by_label


def test_stats_count_requests_and_5xx_per_route(gateway, client):
    before = _totals(gateway)
    for path in ["/ok"] * 5 + ["/status/500", "/status/503", "/status/404"]:
        client.get("counted.gantry.localhost", path)
    for _ in range(2):
        assert client.get("private.gantry.localhost", "/no-key").status_code == 401
    client.get("nobody.gantry.localhost")  # no route: counted nowhere

    def grown():
        now = _totals(gateway)
        delta = {label: [a - b for a, b in zip(now[label], before.get(label, [0, 0, 0]))] for label in now}
        enough = delta.get("counted", [0])[0] >= 8 and delta.get("private", [0])[0] >= 2
        return delta if enough else None

    delta = wait_for(grown, "HAProxy's log lines reached the stats")
    assert delta == {"counted": [8, 2, 8], "private": [2, 0, 2]}
    minute = gateway.control.get("/v1/stats").json()["minutes"][0]
    assert set(minute["latency_ms"]) == {"1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "5000",
                                         "10000", "30000", "60000", "inf"}


def test_without_a_tcp_frontend_tcp_routes_are_taken_not_served_and_it_says_so(gateway, client, routes):
    """The plane sends one table to every gateway: one that was not given --tcp-bind/--tcp-ports
    still serves the table's HTTP routes, listens on no TCP port, and tells whoever asks."""
    with_tcp = {**ROUTES, "tcp_routes": [tcp_route("counted-ssh", 20001, backend(GATEWAY_IP, PORT)),
                                         tcp_route("counted-db", 20002)]}
    answer = gateway.push(with_tcp)
    assert answer["tcp_routes"] == {"count": 2, "served": False}
    assert gateway.control.get("/v1/routes").json() == answer
    assert gateway.said("2 TCP routes are not served: this gateway has no TCP frontend (--tcp-bind, --tcp-ports)")
    assert client.get("counted.gantry.localhost", "/with-tcp-routes").status_code == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((GATEWAY_IP, 20001), timeout=5)
    restored = gateway.push(ROUTES)
    assert restored["tcp_routes"] == {"count": 0, "served": False}
