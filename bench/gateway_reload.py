"""Gateway push benchmark (issue 25): what a push costs, through the runtime API and by a reload,
and what each does to traffic.

Runs the real `python -m gateway run` (HAProxy 2.6) on free loopback ports with a local CA made
by `python -m gateway ca`, and a small threaded HTTP backend in this process (four listening
ports, four "replicas"). Prints, as min / median / max over BENCH_RUNS (default 3) runs:
  - push until served, backend changes through the runtime API: PUT /v1/routes until its 200
    (which the gateway answers once HAProxy serves the table), for tables of 1, 100 and 1,000
    routes (two backends and two keys each), changing one route's backends, then every route's;
    each push is checked: the next request to a changed route reaches one of its new backends;
  - push until served by a reload, the pool growing: a fresh gateway (a pool of 64 backends)
    pushed 100, then 1,000 routes (each push needs a bigger pool: a config written, checked with
    `haproxy -c`, SIGUSR2, the new worker answering);
  - requests lost across BENCH_PUSHES (default 20) runtime pushes, then across the reloads of the
    pool growing and the client timeout rising (7), under HTTPS GETs from 4 threads, once with a
    new connection per request and once with keep-alive clients (HTTP/1.1, one connection each,
    no retry).

Loopback only; everything lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import statistics
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

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PUSHES = int(os.environ.get("BENCH_PUSHES", "20"))
TOKEN = secrets.token_hex(24)
REPLICAS = 4


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = str(self.server.server_address[1]).encode()  # which replica answered: its port
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # HAProxy closing idle server connections is no error here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spread(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{min(ms):.0f} / {statistics.median(ms):.0f} / {max(ms):.0f} ms"


def make_table(routes: int, ports: list[int], pick, timeout_s: int = 600) -> dict:
    """`pick(i)`: the two replica indexes route i has."""
    return {"domain": "gantry.localhost", "routes": [
        {"label": f"r{i}", "host": f"r{i}.gantry.localhost", "access": "public",
         "key_hashes": sorted(f"{i:032x}{k:032x}" for k in range(2)), "unavailable": "",
         "timeout_s": timeout_s, "max_body_bytes": 2**30, "stop_grace_seconds": 30,
         "backends": sorted(({"replica": f"00000000-0000-4000-8000-{n:012d}", "address": "127.0.0.1",
                              "port": ports[n]} for n in pick(i)), key=lambda b: b["replica"])}
        for i in range(routes)]}


class Gateway:
    def __init__(self, work: Path, name: str):
        self.https, http, self.control_port = free_port(), free_port(), free_port()
        self.log = (work / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--state-dir", str(work / name),
             "--cert", str(work / "ca" / "gateway.pem"), "--https-bind", f"127.0.0.1:{self.https}",
             "--http-bind", f"127.0.0.1:{http}", "--control-bind", f"127.0.0.1:{self.control_port}",
             "--token-file", str(work / "token")], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"gateway ready" not in (work / f"{name}.log").read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((work / f"{name}.log").read_text())
            time.sleep(0.05)
        self.control = httpx.Client(base_url=f"http://127.0.0.1:{self.control_port}", timeout=300,
                                    headers={"Authorization": f"Bearer {TOKEN}"})

    def push(self, table: dict) -> float:
        body = json.dumps({"version": 1, "digest": canonical_digest(table), "table": table}).encode()
        started = time.perf_counter()
        response = self.control.put("/v1/routes", content=body)
        response.raise_for_status()
        return time.perf_counter() - started

    def close(self) -> None:
        self.control.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def answered_by(context: ssl.SSLContext, port: int, host: str) -> int:
    with httpx.Client(verify=context, timeout=10) as client:
        return int(client.get(f"https://127.0.0.1:{port}/", headers={"Host": host},
                              extensions={"sni_hostname": host}).text)


def traffic(context: ssl.SSLContext, https_port: int, keep_alive: bool, stop: threading.Event, counts: dict) -> None:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0, max_connections=1)
    with httpx.Client(verify=context, timeout=10, limits=limits) as client:
        while not stop.is_set():
            try:
                ok = client.get(f"https://127.0.0.1:{https_port}/", headers={"Host": "r0.gantry.localhost"},
                                extensions={"sni_hostname": "r0.gantry.localhost"}).status_code == 200
            except httpx.HTTPError as exc:
                ok = False
                counts["errors"].add(f"{type(exc).__name__}: {exc}")
            counts["ok" if ok else "failed"] += 1


def under_load(context: ssl.SSLContext, gateway: Gateway, keep_alive: bool, pushes: list[dict]) -> str:
    stop, counts = threading.Event(), {"ok": 0, "failed": 0, "errors": set()}
    threads = [threading.Thread(target=traffic, args=(context, gateway.https, keep_alive, stop, counts))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for table in pushes:
        time.sleep(0.2)
        gateway.push(table)
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(30)
    return (f"{counts['ok']} requests answered, {counts['failed']} failed"
            + (f" ({'; '.join(sorted(counts['errors']))})" if counts["errors"] else ""))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as work_dir:
        work = Path(work_dir)
        subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(work / "ca"), "--domain",
                        "gantry.localhost"], cwd=ROOT, check=True, capture_output=True)
        (work / "token").write_text(TOKEN)
        context = ssl.create_default_context(cafile=str(work / "ca" / "ca.crt"))
        servers = [Backend(("127.0.0.1", 0), Ok) for _ in range(REPLICAS)]
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        ports = [server.server_address[1] for server in servers]

        print(f"push until served, min / median / max of {RUNS} runs")
        gateway = Gateway(work, "runtime")
        try:
            for routes in (1, 100, 1000):
                gateway.push(make_table(routes, ports, lambda i: (0, 1)))  # the pool grows here, once
                one, every = [], []
                for run in range(RUNS):
                    a, b = (2, 3) if run % 2 == 0 else (0, 1)
                    one.append(gateway.push(make_table(routes, ports, lambda i: (a, b) if i == 0 else (0, 1))))
                    assert answered_by(context, gateway.https, "r0.gantry.localhost") in (ports[a], ports[b])
                    every.append(gateway.push(make_table(routes, ports, lambda i: (a, b))))
                    last = f"r{routes - 1}.gantry.localhost"
                    assert answered_by(context, gateway.https, last) in (ports[a], ports[b])
                    gateway.push(make_table(routes, ports, lambda i: (0, 1)))
                print(f"  runtime API, {routes:>4} routes: one route's backends swapped {spread(one)}; "
                      f"every route's {spread(every)}")
        finally:
            gateway.close()
        grown: dict[int, list[float]] = {100: [], 1000: []}
        for run in range(RUNS):
            for routes in grown:
                gateway = Gateway(work, f"grow-{run}-{routes}")
                try:
                    grown[routes].append(gateway.push(make_table(routes, ports, lambda i: (0, 1))))
                finally:
                    gateway.close()
        for routes, times in grown.items():
            print(f"  reload (pool of 64 grown for {routes:>4} routes): {spread(times)}")

        gateway = Gateway(work, "traffic")
        try:
            runtime = [make_table(3 + n % 3, ports, lambda i, n=n: (n % REPLICAS, (n + 1) % REPLICAS))
                       for n in range(PUSHES)]
            reloads = [make_table(routes, ports, lambda i: (0, 1), timeout_s)
                       # each needs a reload: a longer timeout, or more routes than free backends
                       for routes, timeout_s in [(40, 900), (40, 2000), (200, 2000), (200, 5000), (200, 10000),
                                                 (700, 10000), (700, 20000)]]
            for keep_alive in (False, True):
                mode = "keep-alive" if keep_alive else "a connection per request"
                gateway.push(make_table(1, ports, lambda i: (0, 1)))
                print(f"{PUSHES} runtime pushes under load, {mode}: "
                      f"{under_load(context, gateway, keep_alive, runtime)}")
            for keep_alive in (False, True):
                mode = "keep-alive" if keep_alive else "a connection per request"
                gateway.close()
                gateway = Gateway(work, f"reloads-{keep_alive}")
                gateway.push(make_table(1, ports, lambda i: (0, 1)))
                print(f"{len(reloads)} reloads under load, {mode}: {under_load(context, gateway, keep_alive, reloads)}")
        finally:
            gateway.close()


if __name__ == "__main__":
    main()
