"""A stand-in for a gateway's control API, on 127.0.0.1: it answers `PUT /v1/routes`,
`GET /v1/routes` and `GET /v1/stats` as the gateway does (docs/gateway.md), records every
request, and can be told to fail, so the plane's push and its collection of request stats are
tested over real HTTP without HAProxy."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes


@dataclass
class StandinGateway:
    token: str
    requests: list[Seen] = field(default_factory=list)
    serving: str | None = None  # the digest it serves; None after a (simulated) restart
    fail_with: int | None = None  # answer every PUT with this status instead of taking the table
    stats: list = field(default_factory=list)  # what GET /v1/stats answers as "minutes"
    stats_body: bytes | None = None  # answer GET /v1/stats with exactly these bytes instead
    stats_fail_with: int | None = None  # answer GET /v1/stats with this status
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def puts(self) -> list[dict]:
        return [json.loads(seen.body) for seen in self.requests if seen.method == "PUT"]

    def restart(self) -> None:
        self.serving = None


def _handler(gateway: StandinGateway):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, status: int, body: dict, content_type: str = "application/json") -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _problem(self, status: int, title: str, detail: str) -> None:
            self._answer(status, {"type": "about:blank", "title": title, "status": status, "detail": detail},
                         "application/problem+json")

        def _seen(self) -> Seen | None:
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length))
            gateway.requests.append(seen)
            if self.path not in ("/v1/routes", "/v1/stats"):
                self._problem(404, "Not found", "no such path")
                return None
            if seen.headers.get("authorization") != f"Bearer {gateway.token}":
                self._problem(401, "Unauthorized", "missing or wrong token")
                return None
            return seen

        def do_GET(self):  # noqa: N802
            seen = self._seen()
            if seen is None:
                return
            if seen.path == "/v1/routes":
                self._answer(200, {"digest": gateway.serving, "applied_at": None})
            elif gateway.stats_fail_with is not None:
                self._problem(gateway.stats_fail_with, "Broken", "the stats are not available")
            elif gateway.stats_body is not None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(gateway.stats_body)))
                self.end_headers()
                self.wfile.write(gateway.stats_body)
            else:
                self._answer(200, {"minutes": gateway.stats})

        def do_PUT(self):  # noqa: N802
            seen = self._seen()
            if seen is None:
                return
            if seen.path != "/v1/routes":
                self._problem(405, "Method not allowed", "PUT is for /v1/routes")
                return
            if gateway.fail_with is not None:
                self._problem(gateway.fail_with, "Bad table", "routes.0.backends.0.port: out of range")
                return
            digest = json.loads(seen.body)["digest"]
            gateway.serving = digest
            self._answer(200, {"digest": digest, "applied_at": datetime.now(timezone.utc).isoformat()})

    return Handler


def start(token: str) -> StandinGateway:
    gateway = StandinGateway(token=token)
    gateway.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gateway))
    threading.Thread(target=gateway.server.serve_forever, daemon=True).start()
    return gateway


def stop(gateway: StandinGateway) -> None:
    gateway.server.shutdown()
    gateway.server.server_close()


@contextmanager
def registered(default_token: str):
    """`start(name, token=default_token, register_token=None)`: a stand-in gateway started and
    registered with the plane under `name` (with `register_token` when the plane is to hold
    another token than the one it answers to); all of them stopped at the end."""
    from cloud.deployments.services import gateway_register

    started = []

    def start_registered(name: str, token: str = default_token, *, register_token: str | None = None):
        gateway = start(token)
        started.append(gateway)
        gateway_register(name=name, control_url=gateway.url, token=register_token or token)
        return gateway

    try:
        yield start_registered
    finally:
        for gateway in started:
            stop(gateway)
