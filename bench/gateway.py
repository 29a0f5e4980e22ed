"""What the gateway costs a request (issue 25): requests/s and latency p50/p99 through the gateway
beside the same requests sent straight to the upstream, in one run, 50 concurrent connections.

The load is Debian's `wrk` (C, epoll: it is not the bottleneck a Python client would be). The
upstream is on the host, not a TCG guest (which would be the bottleneck): a second HAProxy that
answers every request itself (`http-request return`), about as fast as an HTTP server gets. The
gateway is `python -m gateway run` with its HAProxy, a route pushed to it as the plane pushes one.
Six paths, each RUNS times, in turn, all inside a network namespace the benchmark makes:
  direct        wrk → upstream                              (plain HTTP, keep-alive)
  gateway       wrk → gateway, plain HTTP (`--http-serves-routes`) → upstream
  https         wrk → gateway over TLS, keep-alive          (the cost of TLS once per connection)
  https/close   wrk → gateway over TLS, a new connection per request (a handshake per request)
  hello         wrk → the `hello` image in a microVM (busybox httpd, a connection per request)
  hello/gateway wrk → gateway, plain HTTP → the same VM
Targets, gateway beside direct in the same round: >= 0.8x the requests/s, <= 5 ms added at p99.
Beside them, the CPU time each request costs the gateway (its HAProxy and its own process) and
the upstream, from /proc: what decides the ratio when all of them share this machine's cores.
Figures are min / median / max over the rounds (never the best round).
Settings: BENCH_GATEWAY_RUNS (3), BENCH_GATEWAY_SECONDS (10), BENCH_GATEWAY_CONNECTIONS (50).
"""

from __future__ import annotations

import asyncio
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
from bench.kit.start_marks import _cpu_of, _group_cpu, _stat  # noqa: E402
from bench.kit.vm import HELLO, KIT_BASE, in_netns, reexec_in_netns, registry_with_hello  # noqa: E402

RUNS = int(os.environ.get("BENCH_GATEWAY_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_GATEWAY_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_GATEWAY_CONNECTIONS", "50"))
HOST = "bench-aaaaaa.gantry.localhost"
HELLO_HOST = "bench-hello.gantry.localhost"
_IN_NS = "GANTRY_BENCH_GATEWAY_NETNS"
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
    # A TCG guest's httpd can take seconds to answer under 50 connections: wrk's own 2 s timeout
    # would count those as errors, where a client would have waited.
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "10s", "--latency", url]
    for header in headers:
        argv[1:1] = ["-H", header]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors on {url}:\n{out}")

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rate, "requests": requests, "p50": pct("50"), "p99": pct("99")}


def _cpu(pid: int) -> float:
    return _cpu_of(_stat(pid))


def timed(groups: dict[str, int], url: str, *headers: str) -> dict:
    """wrk, and the CPU microseconds per request each named process group used meanwhile (and
    of the gateway's, its own Python process: the rest is its HAProxy)."""
    def sample() -> dict[str, float]:
        return {"py": _cpu(groups["gateway"]), **{name: _group_cpu(pgid) for name, pgid in groups.items()}}

    before = sample()
    run = wrk(url, *headers)
    after = sample()
    for name in after:
        run[f"cpu_{name}"] = (after[name] - before[name]) * 1e6 / max(run["requests"], 1)
    return run


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


async def main(work: Path) -> int:
    """The hello VM first (the agent's runtime, as the node runs it), then the rest."""
    from nodes.agent.runtime_build import build_runtime
    from protocol.wire import ReplicaSpec

    await asyncio.to_thread(registry_with_hello, work / "registry")
    (work / "data").mkdir()
    runtime = build_runtime(data_dir=work / "data", trusted_registries={"127.0.0.1:5000"}, kit_cache=KIT_BASE)
    try:
        info = await runtime.start(ReplicaSpec(name="bench-hello", image=HELLO, traffic_port=8080))
        if info.state != "running":
            raise SystemExit(f"hello did not come up: {info.state} {info.reason}")
        return await asyncio.to_thread(measure, work, (info.address, 8080))
    finally:
        await runtime.remove("bench-hello")
        await runtime.close()


def _route(label: str, host: str, address: str, port: int) -> dict:
    return {"label": label, "host": host, "access": "public", "key_hashes": [], "unavailable": "",
            "timeout_s": 600, "max_body_bytes": 1 << 30, "stop_grace_seconds": 10,
            "backends": [{"replica": f"00000000-0000-0000-0000-{len(label):012d}", "address": address, "port": port}]}


def measure(work: Path, hello: tuple[str, int]) -> int:
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
        table = {"domain": "gantry.localhost", "routes": [
            _route(HOST.split(".")[0], HOST, "127.0.0.1", upstream),
            _route(HELLO_HOST.split(".")[0], HELLO_HOST, *hello)]}
        digest = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        pushed = httpx.put(f"{ctl}/v1/routes", json={"version": 1, "digest": digest, "table": table},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        if pushed.status_code != 200:
            raise SystemExit(f"push refused: {pushed.status_code} {pushed.text}")
        wait_for(lambda: _ok(f"http://127.0.0.1:{http}/", host=HOST), timeout=10, what="the route")
        wait_for(lambda: _ok(f"http://127.0.0.1:{http}/", host=HELLO_HOST), timeout=30, what="the hello route")
        groups = {"gateway": procs.procs["gateway"].pid, "upstream": procs.procs["upstream"].pid}

        paths = {
            "direct": (f"http://127.0.0.1:{upstream}/",),
            "gateway": (f"http://127.0.0.1:{http}/", f"Host: {HOST}"),
            "https": (f"https://127.0.0.1:{https}/", f"Host: {HOST}"),
            "https/close": (f"https://127.0.0.1:{https}/", f"Host: {HOST}", "Connection: close"),
            "hello": (f"http://{hello[0]}:{hello[1]}/",),
            "hello/gateway": (f"http://127.0.0.1:{http}/", f"Host: {HELLO_HOST}"),
        }
        rounds: dict[str, list[dict]] = {name: [] for name in paths}
        for n in range(RUNS):
            for name, args in paths.items():
                rounds[name].append(timed(groups, *args))
            d, g = rounds["direct"][-1], rounds["gateway"][-1]
            say(f"round {n + 1}: direct {d['rps']:.0f} req/s p99 {d['p99']:.2f} ms; gateway {g['rps']:.0f} req/s "
                f"p99 {g['p99']:.2f} ms; ratio {g['rps'] / d['rps']:.2f}, added p99 {g['p99'] - d['p99']:.2f} ms")
    finally:
        procs.stop()

    say(f"\n{CONNECTIONS} connections, {SECONDS} s per path, {RUNS} rounds; min / median / max")
    say(f"{'path':14} {'req/s':>24} {'p50 ms':>24} {'p99 ms':>24} {'gateway CPU us/req':>20} {'its Python':>16} {'upstream':>16}")
    for name, runs in rounds.items():
        say(f"{name:14} {spread([r['rps'] for r in runs]):>24} {spread([r['p50'] for r in runs], '{:.2f}'):>24} "
            f"{spread([r['p99'] for r in runs], '{:.2f}'):>24} {spread([r['cpu_gateway'] for r in runs]):>20} "
            f"{spread([r['cpu_py'] for r in runs]):>16} {spread([r['cpu_upstream'] for r in runs]):>16}")
    hello_ratios = [g["rps"] / d["rps"] for g, d in zip(rounds["hello/gateway"], rounds["hello"])]
    hello_added = [g["p99"] - d["p99"] for g, d in zip(rounds["hello/gateway"], rounds["hello"])]
    say(f"hello: gateway/direct req/s {spread(hello_ratios, '{:.2f}')}, added p99 ms {spread(hello_added, '{:.2f}')}")
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
    if os.geteuid() != 0:
        raise SystemExit("bench/gateway.py needs root (a network namespace, a microVM)")
    if not in_netns(_IN_NS):
        sys.exit(reexec_in_netns(__file__, _IN_NS))
    with tempfile.TemporaryDirectory(prefix="gantry-bench-gateway-") as tmp:
        sys.exit(asyncio.run(main(Path(tmp))))
