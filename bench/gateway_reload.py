"""Gateway reload benchmark (issue 25): what one push costs, and what a reload does to traffic.

Runs the real `python -m gateway run` (HAProxy 2.6) on free loopback ports with a local CA made
by `python -m gateway ca`, and a small threaded HTTP backend in this process. Prints:
  - push latency: PUT /v1/routes until the 200 (config written, `haproxy -c`, SIGUSR2, the new
    worker answering), median of BENCH_PUSHES (default 10) pushes, for tables of 1, 100 and
    1,000 routes (two backends and two keys each);
  - requests lost across BENCH_RELOADS (default 20) reloads under a steady loop of HTTPS GETs
    from 4 threads, once with a new connection per request and once with keep-alive clients
    (HTTP/1.1, no retry: an idle connection the old worker closes can race a request sent on it).

Loopback only; everything lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.table import canonical_digest  # noqa: E402

PUSHES = int(os.environ.get("BENCH_PUSHES", "10"))
RELOADS = int(os.environ.get("BENCH_RELOADS", "20"))
TOKEN = secrets.token_hex(24)
HOST = "r0.gantry.localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # HAProxy closing its idle server connections as an old worker exits is no error here


def make_table(routes: int, backend_ports: list[int], generation: int) -> dict:
    return {"domain": "gantry.localhost", "routes": [
        {"label": f"r{i}", "host": f"r{i}.gantry.localhost", "access": "public",
         "key_hashes": sorted(secrets.token_hex(32) for _ in range(2)), "unavailable": "",
         "timeout_s": 600, "max_body_bytes": 2**30, "stop_grace_seconds": 30,
         "backends": [{"replica": f"00000000-0000-4000-{n:04d}-{generation:06d}{i:06d}", "address": "127.0.0.1",
                       "port": port} for n, port in enumerate(backend_ports)]}
        for i in range(routes)]}


def push(control: httpx.Client, table: dict) -> float:
    body = json.dumps({"version": 1, "digest": canonical_digest(table), "table": table}).encode()
    started = time.perf_counter()
    response = control.put("/v1/routes", content=body)
    response.raise_for_status()
    return time.perf_counter() - started


def traffic(context: ssl.SSLContext, https_port: int, keep_alive: bool, stop: threading.Event, counts: dict) -> None:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    with httpx.Client(verify=context, timeout=10, limits=limits) as client:
        while not stop.is_set():
            try:
                ok = client.get(f"https://127.0.0.1:{https_port}/", headers={"Host": HOST},
                                extensions={"sni_hostname": HOST}).status_code == 200
            except httpx.HTTPError as exc:
                ok = False
                counts["errors"].add(f"{type(exc).__name__}: {exc}")
            counts["ok" if ok else "failed"] += 1


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as work_dir:
        work = Path(work_dir)
        subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(work / "ca"), "--domain",
                        "gantry.localhost"], cwd=ROOT, check=True, capture_output=True)
        (work / "token").write_text(TOKEN)
        backends = [Backend(("127.0.0.1", 0), Ok) for _ in range(2)]
        for server in backends:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        ports = [server.server_address[1] for server in backends]
        https_port, http_port, control_port = free_port(), free_port(), free_port()
        log = (work / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--state-dir", str(work / "state"),
             "--cert", str(work / "ca" / "gateway.pem"), "--https-bind", f"127.0.0.1:{https_port}",
             "--http-bind", f"127.0.0.1:{http_port}", "--control-bind", f"127.0.0.1:{control_port}",
             "--token-file", str(work / "token")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"gateway ready" not in (work / "gateway.log").read_bytes():
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((work / "gateway.log").read_text())
                time.sleep(0.05)
            control = httpx.Client(base_url=f"http://127.0.0.1:{control_port}", timeout=120,
                                   headers={"Authorization": f"Bearer {TOKEN}"})
            generation = 0
            for routes in (1, 100, 1000):
                times = []
                for _ in range(PUSHES):
                    generation += 1
                    times.append(push(control, make_table(routes, ports, generation)))
                print(f"push until served, {routes:>4} routes: median {statistics.median(times) * 1000:.0f} ms, "
                      f"max {max(times) * 1000:.0f} ms")
            context = ssl.create_default_context(cafile=str(work / "ca" / "ca.crt"))
            for keep_alive in (False, True):
                generation += 1
                push(control, make_table(1, ports, generation))
                stop, counts = threading.Event(), {"ok": 0, "failed": 0, "errors": set()}
                threads = [threading.Thread(target=traffic, args=(context, https_port, keep_alive, stop, counts))
                           for _ in range(4)]
                for thread in threads:
                    thread.start()
                for _ in range(RELOADS):
                    generation += 1
                    push(control, make_table(1, ports, generation))
                    time.sleep(0.1)
                stop.set()
                for thread in threads:
                    thread.join(30)
                print(f"{RELOADS} reloads under load, {'keep-alive' if keep_alive else 'a connection per request'}: "
                      f"{counts['ok']} requests answered, {counts['failed']} failed"
                      + (f" ({'; '.join(sorted(counts['errors']))})" if counts["errors"] else ""))
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
