"""The control API the plane talks to (docs/gateway.md): a small HTTP/1.1 server, stdlib only.

    GET /healthz            200 "ok", no token
    PUT /v1/routes          the route table; 200 {"digest", "applied_at"} once it is served
    GET /v1/routes          200 {"digest", "applied_at"} of the table served now
    GET /v1/stats           200 {"minutes": [...]} per route, the last 60 minutes

Everything but /healthz needs `Authorization: Bearer <token>`, compared in constant time before
a byte of the body is read. Bodies over 16 MiB are refused from their Content-Length alone.
Errors are problem details (RFC 9457), as the plane's API answers.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.binds import Bind
from gateway.proxy import ProxyError
from gateway.service import Gateway
from gateway.table import TableError, parse_push

MAX_BODY_BYTES = 16 * 1024 * 1024
READ_TIMEOUT_S = 30  # a client that stops sending mid-body loses its connection, not a thread forever
_ROUTES, _STATS, _HEALTHZ = "/v1/routes", "/v1/stats", "/healthz"
_METHODS = {_ROUTES: ("GET", "PUT"), _STATS: ("GET",), _HEALTHZ: ("GET",)}


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, bind: Bind, gateway: Gateway, token: str):
        self.address_family = socket.AF_INET6 if bind.address.version == 6 else socket.AF_INET
        super().__init__((bind.host, bind.port), _Handler)
        self.gateway = gateway
        self.expected_authorization = f"Bearer {token}".encode()


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer
    protocol_version = "HTTP/1.1"
    server_version = "gantry-gateway"
    sys_version = ""
    timeout = READ_TIMEOUT_S
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK of the headers (40 ms on Linux), longer than applying most pushes takes.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server answers itself (a malformed request line, an unknown method, headers
        too long) as problem details too, never its HTML page."""
        status = HTTPStatus(code)
        # http.server takes an unparsed request line for HTTP/0.9, which has no status line.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        self._problem(status, message or status.description)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        allowed = _METHODS.get(path)
        if allowed is None:
            return self._problem(HTTPStatus.NOT_FOUND, "The control API has no such path.")
        if method not in allowed:
            return self._problem(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {' and '.join(allowed)}.",
                                 headers={"Allow": ", ".join(allowed)})
        if path == _HEALTHZ:
            return self._send(HTTPStatus.OK, b"ok", "text/plain; charset=utf-8")
        if not self._authorized():
            return self._problem(HTTPStatus.UNAUTHORIZED, "Send the gateway token: Authorization: Bearer <token>.",
                                 headers={"WWW-Authenticate": "Bearer"})
        gateway = self.server.gateway
        if path == _STATS:
            return self._json(HTTPStatus.OK, {"minutes": gateway.stats.minutes()})
        if method == "GET":
            return self._json(HTTPStatus.OK, gateway.applied.as_dict())
        body = self._body()
        if body is None:
            return
        try:
            push = parse_push(body, gateway.tcp.ports if gateway.tcp else None)
        except TableError as exc:
            return self._problem(HTTPStatus.BAD_REQUEST, str(exc), title="Invalid route table",
                                 errors=[{"field": exc.field, "message": exc.message, "code": "invalid"}])
        try:
            applied = gateway.push(push, body)
        except ProxyError as exc:
            return self._problem(HTTPStatus.SERVICE_UNAVAILABLE, f"The table was not applied: {exc}")
        return self._json(HTTPStatus.OK, applied.as_dict())

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        # Header values arrive as latin-1 text: back to their bytes, then one constant-time compare.
        return hmac.compare_digest(given.encode("latin-1", errors="replace"), self.server.expected_authorization)

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._problem(HTTPStatus.LENGTH_REQUIRED, "Send the table with a Content-Length.")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._problem(HTTPStatus.LENGTH_REQUIRED, "Send the table with a Content-Length.")
            return None
        if not raw.isascii() or not raw.isdigit():
            self._problem(HTTPStatus.BAD_REQUEST, "Content-Length is not a number.")
            return None
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self._problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"A table takes at most {MAX_BODY_BYTES} bytes.")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _json(self, status: HTTPStatus, document: dict) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _problem(self, status: HTTPStatus, detail: str, *, title: str | None = None, headers: dict | None = None,
                 **extra) -> None:
        document = {"type": "about:blank", "title": title or status.phrase, "status": int(status), "detail": detail,
                    **extra}
        # A refused request's body may be unread: the connection cannot carry another request.
        self.close_connection = True
        self._send(status, json.dumps(document).encode(), "application/problem+json",
                   {"Connection": "close", **(headers or {})})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if getattr(self, "path", None) != _HEALTHZ:  # no path when the request line did not parse
            sys.stderr.write(f"gateway control: {self.address_string()} {format % args}\n")
