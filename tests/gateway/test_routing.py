"""Requests through the real gateway: TLS, redirects, hosts, forwarding headers, balance, limits, streams."""

from __future__ import annotations

import socket
import threading
from collections import Counter

import httpx
import pytest
from websockets.sync.client import connect

from tests.gateway.conftest import GATEWAY_IP, HOST_IP, Client, HTTP_PORT, HTTPS_PORT, problem, ssl_context
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
ONE, TWO, WS = 18001, 18002, 18003


@pytest.fixture(scope="module", autouse=True)
def routes(gateway, backends):
    backends.http(ONE, "one")
    backends.http(TWO, "two")
    backends.ws(WS)
    gateway.push(table(
        route("app", backend(GATEWAY_IP, ONE)),
        route("pair", backend(GATEWAY_IP, ONE), backend("127.0.0.1", TWO)),
        route("small", backend(GATEWAY_IP, ONE), max_body_bytes=1000),
        route("off", unavailable="no capacity"),
        route("socket", backend("127.0.0.1", WS)),
    ))


def test_https_answers_with_a_certificate_from_the_ca(client):
    response = client.get("app.gantry.localhost", "/hello")
    assert response.status_code == 200
    assert response.json()["path"] == "/hello"


def test_a_client_without_the_ca_does_not_trust_it():
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        with httpx.Client() as system_trust:
            system_trust.get(f"https://{GATEWAY_IP}/", headers={"Host": "app.gantry.localhost"},
                             extensions={"sni_hostname": "app.gantry.localhost"})


def test_plain_http_is_redirected_to_https_with_path_and_query():
    response = httpx.get(f"http://{GATEWAY_IP}:{HTTP_PORT}/a/b?c=d", headers={"Host": "App.gantry.localhost:80"})
    assert response.status_code == 308
    assert response.headers["location"] == "https://app.gantry.localhost/a/b?c=d"


def test_an_unknown_host_is_404(client):
    response = client.get("nobody.gantry.localhost")
    assert response.status_code == 404
    assert problem(response)["title"] == "Not Found"


def test_the_host_is_matched_without_its_port_and_case(client):
    response = client.get("app.gantry.localhost", "/x", headers={"Host": "APP.Gantry.Localhost:443"})
    assert response.status_code == 200


def test_forwarding_headers_are_the_gateways_not_the_clients(client):
    response = client.get("app.gantry.localhost", "/fwd", headers={
        "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.7;proto=http", "X-Real-IP": "203.0.113.7"})
    headers = Counter(name.lower() for name, _ in response.json()["headers"])
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    assert (headers["x-forwarded-for"], headers["x-forwarded-proto"], headers["x-forwarded-host"]) == (1, 1, 1)
    assert seen["x-forwarded-for"] == HOST_IP
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "app.gantry.localhost"
    assert "forwarded" not in seen and "x-real-ip" not in seen


def test_a_public_route_answers_without_a_key_and_never_passes_one_on(client, backends):
    response = client.get("app.gantry.localhost", "/public-key", headers={"Gantry-Key": "gk_not-for-you"})
    assert response.status_code == 200
    request = next(r for r in backends.seen(ONE) if r["path"] == "/public-key")
    assert "gantry-key" not in {name.lower() for name, _ in request["headers"]}


def test_two_backends_both_answer_over_50_requests(client):
    answered = Counter(client.get("pair.gantry.localhost", "/who").json()["backend"] for _ in range(50))
    assert set(answered) == {"one", "two"}


def test_a_route_without_backends_is_503_with_its_reason_and_retry_after(client):
    response = client.get("off.gantry.localhost")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "no capacity" in problem(response)["detail"]


def test_a_body_over_the_routes_limit_is_413_and_never_reaches_the_backend(client, backends):
    too_big = client.request("POST", "small.gantry.localhost", "/upload-big", content=b"x" * 1001)
    at_limit = client.request("POST", "small.gantry.localhost", "/upload-ok", content=b"x" * 1000)
    assert too_big.status_code == 413
    assert "1000 bytes" in problem(too_big)["detail"]
    assert at_limit.status_code == 200 and at_limit.json()["body_bytes"] == 1000
    assert "/upload-big" not in [r["path"] for r in backends.seen(ONE)]


def test_a_server_sent_event_arrives_before_the_stream_ends(client, backends):
    """The backend holds its stream open after the first event until the test releases it:
    a gateway that buffered the response would deliver nothing, and the read would time out."""
    with client.stream("GET", "app.gantry.localhost", "/sse/s1", timeout=httpx.Timeout(20)) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        assert next(lines) == "data: first from one"
        assert backends.held(ONE) == ["s1"]  # the stream is still open at the backend
        backends.release(ONE, "s1")
        assert [line for line in lines if line] == ["data: second"]


def test_a_websocket_passes_through(certs):
    host = "socket.gantry.localhost"
    with connect(f"wss://{host}/echo", sock=socket.create_connection((GATEWAY_IP, HTTPS_PORT), timeout=10),
                 ssl=ssl_context(certs), server_hostname=host, open_timeout=10) as ws:
        for message in ("hello", "x" * 70000, b"\x00\x01binary"):
            ws.send(message)
            assert ws.recv(timeout=10) == message


def test_concurrent_requests_are_all_answered(certs):
    """Keep-alive connections from several threads at once (HAProxy's threads, our leastconn)."""
    failures = []

    def worker():
        c = Client(certs)
        try:
            for _ in range(10):
                if c.get("pair.gantry.localhost", "/many").status_code != 200:
                    failures.append(1)
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
