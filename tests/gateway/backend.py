"""A replica stand-in for the gateway's behaviour tests, run inside the test's namespace.

    python tests/gateway/backend.py http PORT NAME    HTTP/1.1 on 0.0.0.0:PORT
    python tests/gateway/backend.py ws PORT           a WebSocket echo on 0.0.0.0:PORT
    python tests/gateway/backend.py tcp PORT NAME     raw TCP on 0.0.0.0:PORT: says "NAME\n", then echoes

Every answer says which backend gave it. Paths under /_ are the test's own window into the
backend, called directly (not through the gateway):
    /_seen              every request the backend was sent through the gateway: method, path, headers
    /_held              ids of /hold and /sse requests waiting now
    /_release/ID        lets the /hold or /sse request ID finish
Paths a test sends through the gateway:
    /status/N           answers status N
    /hold/ID            answers only once /_release/ID is called (a slow request, in flight)
    /sse/ID             an event stream: one event at once, the second after /_release/ID
    /tokens/ID          an event stream like an LLM's: `data: N` every 0.1 s, `data: end` after /_release/ID
    anything else       200, the request as the backend saw it
Nothing here waits a guessed time for the test: a test releases what it holds.
"""

from __future__ import annotations

import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from websockets.sync.server import serve

HOLD_LIMIT_S = 60


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, name: str):
        super().__init__(("0.0.0.0", port), Handler)
        self.name = name
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        self.holds: dict[str, threading.Event] = {}


class Handler(BaseHTTPRequestHandler):
    server: Backend
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_any()

    def do_POST(self) -> None:
        self.handle_any()

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path
        state = self.server
        if path == "/_seen":
            with state.lock:
                return self.json(200, state.seen)
        if path == "/_held":
            with state.lock:
                return self.json(200, sorted(key for key, event in state.holds.items() if not event.is_set()))
        if path.startswith("/_release/"):
            with state.lock:
                event = state.holds.setdefault(path.removeprefix("/_release/"), threading.Event())
            event.set()
            return self.json(200, {"released": True})
        request = {"backend": state.name, "method": self.command, "path": path, "headers": self.headers.items(),
                   "body_bytes": len(body)}
        with state.lock:
            state.seen.append(request)
        if path.startswith("/status/"):
            return self.json(int(path.removeprefix("/status/")), request)
        if path.startswith("/hold/"):
            self.hold(path.removeprefix("/hold/"))
            return self.json(200, request)
        if path.startswith("/sse/"):
            return self.sse(path.removeprefix("/sse/"))
        if path.startswith("/tokens/"):
            return self.tokens(path.removeprefix("/tokens/"))
        return self.json(200, request)

    def hold(self, key: str) -> None:
        with self.server.lock:
            event = self.server.holds.setdefault(key, threading.Event())
        event.wait(HOLD_LIMIT_S)

    def sse(self, key: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk(f"data: first from {self.server.name}\n\n".encode())
        self.hold(key)
        self.chunk(b"data: second\n\n")
        self.chunk(b"")

    def tokens(self, key: str) -> None:
        with self.server.lock:
            event = self.server.holds.setdefault(key, threading.Event())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + HOLD_LIMIT_S
        n = 0
        while not event.wait(0.1) and time.monotonic() < deadline:
            self.chunk(f"data: {n} from {self.server.name}\n\n".encode())
            n += 1
        self.chunk(b"data: end\n\n")
        self.chunk(b"")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def json(self, status: int, document) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_ws(port: int) -> None:
    def echo(connection) -> None:
        for message in connection:
            connection.send(message)

    with serve(echo, "0.0.0.0", port) as server:
        print("ready", flush=True)
        server.serve_forever()


class TcpEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str):
        super().__init__(("0.0.0.0", port), EchoHandler)
        self.name = name


class EchoHandler(socketserver.BaseRequestHandler):
    server: TcpEcho

    def handle(self) -> None:
        self.request.sendall(f"{self.server.name}\n".encode())
        while data := self.request.recv(65536):
            self.request.sendall(data)


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "ws":
        return serve_ws(port)
    if kind == "tcp":
        echo = TcpEcho(port, sys.argv[3])
        print("ready", flush=True)
        return echo.serve_forever()
    server = Backend(port, sys.argv[3])
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
