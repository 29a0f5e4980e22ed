"""What the gateway costs a request (issue 25): requests/s and latency p50/p99 through the gateway
beside the same requests sent straight to the upstream, in one run, 50 concurrent connections.

The load is Debian's `wrk` (C, epoll: it is not the bottleneck a Python client would be). The
upstream is on the host, not a TCG guest (which would be the bottleneck): a second HAProxy that
answers every request itself (`http-request return`), about as fast as an HTTP server gets. The
gateway is `python -m gateway run` with its HAProxy, a route pushed to it as the plane pushes one.
Four paths, each RUNS times, in turn, on loopback:
  direct      wrk → upstream                                (plain HTTP, keep-alive)
  gateway     wrk → gateway, plain HTTP (`--http-serves-routes`) → upstream
  https       wrk → gateway over TLS, keep-alive            (the cost of TLS once per connection)
  https/close wrk → gateway over TLS, a new connection per request (a handshake per request)
Targets, gateway beside direct in the same round: >= 0.8x the requests/s, <= 5 ms added at p99.
Figures are min / median / max over the rounds (never the best round).
Settings: BENCH_GATEWAY_RUNS (3), BENCH_GATEWAY_SECONDS (10), BENCH_GATEWAY_CONNECTIONS (50).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.kit import Procs, free_port, say, wait_for  # noqa: E402

RUNS = int(os.environ.get("BENCH_GATEWAY_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_GATEWAY_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_GATEWAY_CONNECTIONS", "50"))
HOST = "bench-aaaaaa.gantry.localhost"
TOKEN = "bench-gateway-token"

UPSTREAM_CFG = """global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend upstream
  bind 127.0.0.1:{port}
  http-request return status 200 content-type text/plain string "Hello from Gantry"
"""


def wrk(url: str, *headers: str) -> dict:
    """One wrk run: requests/s and latency p50/p99 in ms."""
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url]
    for header in headers:
        argv[1:1] = ["-H", header]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors on {url}:\n{out}")

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rate, "p50": pct("50"), "p99": pct("99")}


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main(work: Path) -> int:
    if not shutil.which("wrk") or not Path("/usr/sbin/haproxy").exists():
        raise SystemExit("bench/gateway.py needs Debian's wrk and haproxy (scripts/ensure-debs.sh installs them)")
    procs = Procs(work, {**os.environ, "PYTHONPATH": str(ROOT)}, ROOT)
    try:
        upstream = free_port()
        (work / "upstream.cfg").write_text(UPSTREAM_CFG.format(port=upstream))
        procs.spawn("upstream", ["/usr/sbin/haproxy", "-db", "-f", str(work / "upstream.cfg")])

        made = subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(work / "ca"), "--domain",
                               "gantry.localhost"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        if made.returncode:
            raise SystemExit(made.stderr)
        (work / "token").write_text(TOKEN)
        https, http, control = free_port(), free_port(), free_port()
        procs.spawn("gateway", [sys.executable, "-m", "gateway", "run", "--state-dir", str(work / "gw"),
                                "--cert", str(work / "ca" / "gateway.pem"), "--token-file", str(work / "token"),
                                "--https-bind", f"127.0.0.1:{https}", "--http-bind", f"127.0.0.1:{http}",
                                "--public-https-port", str(https), "--control-bind", f"127.0.0.1:{control}",
                                "--http-serves-routes"])
        ctl = f"http://127.0.0.1:{control}"
        wait_for(lambda: _ok(f"{ctl}/healthz"), timeout=30, what="the gateway's control API")
        table = {"domain": "gantry.localhost", "routes": [{
            "label": HOST.split(".")[0], "host": HOST, "access": "public", "key_hashes": [], "unavailable": "",
            "timeout_s": 600, "max_body_bytes": 1 << 30, "stop_grace_seconds": 10,
            "backends": [{"replica": "00000000-0000-0000-0000-000000000001", "address": "127.0.0.1", "port": upstream}]}]}
        digest = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        pushed = httpx.put(f"{ctl}/v1/routes", json={"version": 1, "digest": digest, "table": table},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        if pushed.status_code != 200:
            raise SystemExit(f"push refused: {pushed.status_code} {pushed.text}")
        wait_for(lambda: _ok(f"http://127.0.0.1:{http}/", host=HOST), timeout=10, what="the route")

        paths = {
            "direct": (f"http://127.0.0.1:{upstream}/",),
            "gateway": (f"http://127.0.0.1:{http}/", f"Host: {HOST}"),
            "https": (f"https://127.0.0.1:{https}/", f"Host: {HOST}"),
            "https/close": (f"https://127.0.0.1:{https}/", f"Host: {HOST}", "Connection: close"),
        }
        rounds: dict[str, list[dict]] = {name: [] for name in paths}
        for n in range(RUNS):
            for name, args in paths.items():
                rounds[name].append(wrk(*args))
            d, g = rounds["direct"][-1], rounds["gateway"][-1]
            say(f"round {n + 1}: direct {d['rps']:.0f} req/s p99 {d['p99']:.2f} ms; gateway {g['rps']:.0f} req/s "
                f"p99 {g['p99']:.2f} ms; ratio {g['rps'] / d['rps']:.2f}, added p99 {g['p99'] - d['p99']:.2f} ms")
    finally:
        procs.stop()

    say(f"\n{CONNECTIONS} connections, {SECONDS} s per path, {RUNS} rounds; min / median / max")
    say(f"{'path':12} {'req/s':>24} {'p50 ms':>24} {'p99 ms':>24}")
    for name, runs in rounds.items():
        say(f"{name:12} {spread([r['rps'] for r in runs]):>24} {spread([r['p50'] for r in runs], '{:.2f}'):>24} "
            f"{spread([r['p99'] for r in runs], '{:.2f}'):>24}")
    ratios = [g["rps"] / d["rps"] for g, d in zip(rounds["gateway"], rounds["direct"])]
    added = [g["p99"] - d["p99"] for g, d in zip(rounds["gateway"], rounds["direct"])]
    say(f"gateway/direct req/s: {spread(ratios, '{:.2f}')} (target >= 0.80 in every round: "
        f"{'met' if min(ratios) >= 0.8 else 'NOT met'})")
    say(f"added p99 ms:         {spread(added, '{:.2f}')} (target <= 5 ms in every round: "
        f"{'met' if max(added) <= 5 else 'NOT met'})")
    return 0


def _ok(url: str, host: str | None = None) -> bool:
    try:
        return httpx.get(url, headers={"Host": host} if host else {}, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="gantry-bench-gateway-") as tmp:
        sys.exit(main(Path(tmp)))
