"""Log shipping benchmark (issue 16): one agent streaming to one daphne + PostgreSQL.

Prints, for a workload logging at BENCH_LOG_RATE lines/s (default 20,000) for BENCH_LOG_SECONDS
(default 60) with 1 and then 10 WebSocket subscribers, and again at BENCH_LOG_LATENCY_RATE (default
2,000: a rate any host sustains, so the delay is the path's own and not a backlog's):
  - lines/s stored (PostgreSQL rows over the window) and how far storing lagged behind;
  - p50/p99 delay from a line entering the agent's shipping path (its record in the VM's
    logs.jsonl, whose `ts` is when the runtime converted it) to a subscribed WebSocket client
    receiving it (every 10th line sampled, on the same host clock);
  - daphne's and the agent's resident memory over the run (it must stay flat), and the CPU each
    part used (cores busy, and milliseconds per 1,000 lines: what a free host would allow);
and, as a second figure, the same delay end to end from a real chatty microVM (QEMU, TCG here)
through the real agent.

BENCH_LOG_PARTS (default "rate,latency,vm") and BENCH_LOG_SUBSCRIBERS (default "1,10") pick
what runs, for a quicker look at one part.

The first figure's agent is the real daemon (`nodes/agent/daemon.py`: runtime, supervisor,
shipper, client) over a MicroVmRuntime whose VMM is tests/agent/fakes.py's FakeVmm: the guest is a
host process appending to stdout.raw as QEMU does, so conversion, logs.jsonl, the shipper and
everything after are the production code; only the guest's CPU cost of printing is not a VM's.

Everything is this run's own and removed at the end (also on failure): a PostgreSQL database
`<DATABASE_URL name>_logs_bench_<run>`, daphne on a free port with a channel-layer and cache
prefix of the run (their Redis keys deleted after), a temporary data dir, and for the second
figure a docker-registry on a free loopback port and a network namespace for the VM (no veth:
nothing leaves it). No Celery: the replica is placed on the node directly.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit import (Cleanups, Procs, admin_sql, answers_healthz, cpu_s, daphne_argv, free_port,  # noqa: E402
                       kill_under, plane_secrets, quantiles, rss_mib, say, wait_for)
REGISTRY = ROOT / "scripts" / "registry" / "registry.py"
KIT_CACHE = Path(os.environ.get("GANTRY_TEST_KIT_CACHE", "/var/cache/gantry-agent-test"))  # the tests' kit cache

RUN = secrets.token_hex(3)
TAG = f"logs-bench-{RUN}"
RATE = int(os.environ.get("BENCH_LOG_RATE", "20000"))
SECONDS = float(os.environ.get("BENCH_LOG_SECONDS", "60"))
WARMUP_S = 10.0
VM_SECONDS = float(os.environ.get("BENCH_LOG_VM_SECONDS", "30"))
LATENCY_RATE = int(os.environ.get("BENCH_LOG_LATENCY_RATE", "2000"))
LATENCY_S = float(os.environ.get("BENCH_LOG_LATENCY_SECONDS", "20"))
# Which parts run (all by default): "rate" (20,000/s), "latency" (2,000/s), "vm" (the chatty VM);
# and with how many subscribers each synthetic part is measured.
PARTS = set(os.environ.get("BENCH_LOG_PARTS", "rate,latency,vm").split(","))
SUBSCRIBERS = [int(n) for n in os.environ.get("BENCH_LOG_SUBSCRIBERS", "1,10").split(",")]
TARGET_RATE, TARGET_P99_MS = 20_000, 250.0
SAMPLE_EVERY = 10

_base = os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry")
_parts = urlsplit(_base)
DB_NAME = f"{_parts.path.strip('/')}_logs_bench_{RUN.replace('-', '_')}"
os.environ["DATABASE_URL"] = urlunsplit(_parts._replace(path="/" + DB_NAME))
os.environ["DJANGO_SETTINGS_MODULE"] = "cloud.settings"
os.environ["DB_POOL"] = "0"  # the bench's own process; daphne runs with its pool, as in production
os.environ["CHANNELS_PREFIX"] = TAG
os.environ["CACHE_PREFIX"] = TAG
plane_secrets()  # the plane refuses the development key (cloud/production.py)

# The first figure's agent: the real daemon over a fake-VMM runtime (see the docstring).
AGENT = r"""
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from nodes.agent.daemon import run_daemon
from nodes.agent.join import Credential
from nodes.agent.runtime import MicroVmRuntime
from tests.agent.fakes import FakeImageConfig, FakeImageStore, FakeNetwork, FakeVmm, fake_accel, fake_kit
data = Path(sys.argv[2])
sh = FakeImageConfig(entrypoint=["/bin/sh", "-c"], env={"PATH": "/usr/bin:/bin"})
runtime = MicroVmRuntime(data, images=FakeImageStore(data / "images", {"sh": sh}), network=FakeNetwork(),
                         vmm=FakeVmm(), kit_provider=fake_kit, accel_provider=fake_accel)
sys.exit(asyncio.run(run_daemon(runtime, Credential(sys.argv[3], int(sys.argv[4]), sys.argv[5]), data)))
"""

# The workload: RATE lines/s in 10 ms bursts, each line about 80 bytes.
WORKLOAD = r"""
import os, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
out = os.fdopen(1, "wb", buffering=1 << 20)
pad = b"x" * 48
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * rate)
    if n < due:
        out.write(b"".join(b"bench %d %s\n" % (i, pad) for i in range(n, due)))
        out.flush()
        n = due
    time.sleep(0.01)
time.sleep(120)  # stays up past its phase, then goes: a bench cut short leaves no workload behind
"""

# The second figure's workload, in the guest (busybox): as fast as the VM can print.
CHATTY = 'i=0; while :; do i=$((i+1)); echo "chatty $i padding-padding-padding-padding-padding"; done'

_TS = re.compile(r'"ts":"([^"]+)"')


def postgres_pids() -> list[int]:
    """This run's PostgreSQL backends (their process titles name the database)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and DB_NAME.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


class Subscriber:
    """One WebSocket client of the deployment's live tail: counts lines, samples delays."""

    def __init__(self, url: str, headers: dict):
        self.url, self.headers = url, headers
        self.delays: list[float] = []
        self.times: list[float] = []  # when each delay was sampled: where in the run the tail came from
        self.lines = 0
        self.recording = False
        self.task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, additional_headers=self.headers, max_size=None, open_timeout=20) as ws:
            self.connected.set()
            async for frame in ws:
                now = time.time()
                if not self.recording:
                    continue
                self.lines += frame.count("\n") + 1
                for ts in _TS.findall(frame)[::SAMPLE_EVERY]:
                    self.delays.append((now - datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()) * 1000)
                    self.times.append(now)


class Bench(Cleanups):
    def __init__(self, tmp: Path):
        super().__init__()
        self.tmp = tmp
        self.env = {**{k: v for k, v in os.environ.items() if k != "DB_POOL"}, "PYTHONPATH": str(ROOT)}
        self.runner = Procs(tmp / "logs", self.env, ROOT)
        (tmp / "logs").mkdir()

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = self.runner.spawn(name, argv, env)
        self.on_exit(f"stop {name}", lambda: self.runner.stop(name))
        return proc

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return self.runner.procs

    # -- set-up ---------------------------------------------------------------------------------
    def database(self) -> None:
        admin = urlunsplit(_parts._replace(path="/postgres"))
        admin_sql(admin, f'CREATE DATABASE "{DB_NAME}"')

        def drop():
            from django.db import connections

            connections.close_all()
            admin_sql(admin, f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')

        self.on_exit("drop the database", drop)
        import django

        django.setup()
        import logging

        logging.getLogger("django").setLevel(logging.WARNING)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, stdout=io.StringIO())
        self.on_exit("delete the run's Redis keys", self._forget_redis)

    def _forget_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for key in client.scan_iter(match=f"*{TAG}*", count=1000):
            client.delete(key)

    def plane(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.web = self.spawn("daphne", daphne_argv(port), env={**self.env, "DB_POOL": "1"})
        wait_for(lambda: answers_healthz(self.url), timeout=60, what="daphne")
        return self.url

    def customer(self):
        from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

        tenant = TenantFactory(slug="bench")
        user = UserFactory(username="bench@example.com")
        MembershipFactory(user=user, tenant=tenant, role="owner")
        self.tenant = tenant
        self.headers = {"Authorization": f"Bearer {issue_token(user=user, scopes='deployments:read').token}",
                        "X-Tenant": "bench"}

    def node(self, hostname: str):
        from nodes import services
        from protocol import wire as protocol
        from tests.factories import HardwareTypeFactory, LocationFactory

        hardware = HardwareTypeFactory(slug=f"cpu-{hostname}", cpu_only=True, gpus_per_node=4, allowed_gpu_counts=[0],
                                       vcpus_per_gpu=1, memory_gib_per_gpu=1)
        made = services.node_create(hostname=hostname, hardware_type=hardware, location=LocationFactory(),
                                    public_address="192.0.2.1")
        return made, hardware, protocol

    def replica_on(self, node, hardware, *, image: str, args: list[str], entrypoint=None):
        from cloud.deployments.models import Deployment, Replica

        deployment = Deployment.objects.create(
            tenant=self.tenant, name=f"bench-{secrets.token_hex(3)}", image=image, args=args, entrypoint=entrypoint,
            gpus_per_container=0, hardware_type=hardware, price_per_gpu_hour="0.0100", status="starting")
        replica = Replica.objects.create(deployment=deployment, ordinal=0, node=node, state="pending")
        from nodes import link

        from django.db import transaction

        with transaction.atomic():
            link.notify_node(node.pk)  # its agent's consumer sends replica.start
        return deployment, replica


def stored(deployment_id) -> int:
    """Lines stored for the deployment's one replica: its highest seq (the agent numbers from 1
    and the plane stores them in order, with a system line for any gap, so with no gap this is
    the count). An index lookup: a COUNT over millions of rows took PostgreSQL a second of CPU,
    in the measured window, on this 2-core host."""
    from django.db.models import Max

    from cloud.deployments.models import LogLine, Replica

    (replica,) = Replica.objects.filter(deployment_id=deployment_id).values_list("pk", flat=True)
    return LogLine.objects.filter(replica_id=replica).aggregate(m=Max("seq"))["m"] or 0


async def measure(bench: Bench, deployment_id, subscribers: int, seconds: float, *, produced=None, pids=()) -> dict:
    url = bench.url.replace("http://", "ws://") + f"/ws/v1/deployments/{deployment_id}/logs?tail=0"
    subs = [Subscriber(url, bench.headers) for _ in range(subscribers)]
    for sub in subs:
        sub.task = asyncio.create_task(sub.run())
    await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), 60)
    await asyncio.sleep(2)  # every tail live
    before = await asyncio.to_thread(stored, deployment_id)
    made_before = produced() if produced else None
    for sub in subs:
        sub.recording = True
    memory: dict[int, list[float]] = {pid: [] for pid in pids}
    db_pids = postgres_pids()
    cpu_before = {pid: cpu_s(pid) for pid in (*pids, *db_pids)}
    own_before = sum(os.times()[:2])
    load_before = os.getloadavg()[0]
    started, wall_started = time.monotonic(), time.time()
    while time.monotonic() - started < seconds:
        for pid in pids:
            memory[pid].append(rss_mib(pid))
        await asyncio.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - started))))
    elapsed = time.monotonic() - started
    cpu = {pid: cpu_s(pid) - before for pid, before in cpu_before.items()}
    cpu_own = sum(os.times()[:2]) - own_before
    after = await asyncio.to_thread(stored, deployment_id)
    made_after = produced() if produced else None
    for sub in subs:
        sub.recording = False
        sub.task.cancel()
    await asyncio.gather(*(s.task for s in subs), return_exceptions=True)
    for pid in pids:
        memory[pid].append(rss_mib(pid))
    delays = [d for s in subs for d in s.delays]
    # p99 per 10 s of the run: a slow moment (a checkpoint, a vacuum) shows as one bad slice.
    slices: dict[int, list[float]] = {}
    for sub in subs:
        for at, delay in zip(sub.times, sub.delays):
            slices.setdefault(int((at - wall_started) // 10), []).append(delay)
    return {
        "rate": (after - before) / elapsed,
        "produced": (made_after - made_before) / elapsed if produced else None,
        "lag": (made_after - after) if produced else None,
        "delays": quantiles(delays), "samples": len(delays),
        "p99_by_10s": [quantiles(slices[k])[1] for k in sorted(slices)],
        "received": min(s.lines for s in subs) / elapsed, "memory": memory,
        "cpu": {pid: cpu[pid] for pid in pids}, "cpu_db": sum(cpu[pid] for pid in db_pids), "cpu_subscribers": cpu_own,
        "load": (load_before + os.getloadavg()[0]) / 2, "elapsed": elapsed, "lines": after - before,
    }


def report(label: str, result: dict, names: dict[int, str]) -> None:
    p50, p99 = result["delays"]
    produced = f" (entered the shipping path: {result['produced']:,.0f}/s; behind at the end: {result['lag']:,} lines)" \
        if result["produced"] is not None else ""
    say(f"  {label}: stored {result['rate']:,.0f} lines/s{produced}")
    say(f"      each subscriber received {result['received']:,.0f} lines/s; delay shipping path -> subscriber: "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms ({result['samples']:,} samples)")
    say("      p99 of each 10 s: " + ", ".join(f"{p:.0f}" for p in result["p99_by_10s"]) + " ms")
    for pid, series in result["memory"].items():
        say(f"      {names[pid]} RSS MiB: start {series[0]:.0f}, middle {series[len(series) // 2]:.0f}, "
            f"end {series[-1]:.0f}, max {max(series):.0f}")
    per = 1000 / max(result["lines"], 1)
    cpus = ", ".join(f"{names[pid]} {result['cpu'][pid] / result['elapsed']:.2f}" for pid in result["cpu"])
    say(f"      CPU (cores busy): {cpus}, PostgreSQL {result['cpu_db'] / result['elapsed']:.2f}, "
        f"subscribers {result['cpu_subscribers'] / result['elapsed']:.2f}; host load average {result['load']:.1f}")
    costs = ", ".join(f"{names[pid]} {result['cpu'][pid] * per * 1000:.0f}" for pid in result["cpu"])
    say(f"      CPU ms per 1,000 lines stored: {costs}, PostgreSQL {result['cpu_db'] * per * 1000:.0f}")


def synthetic(bench: Bench) -> list[tuple[str, dict]]:
    from nodes import services
    from nodes.agent.logs import last_seq
    from nodes.agent.state import VmPaths

    made, hardware, protocol = bench.node("bench-fake")
    node, credential = services.node_join(token=made.join_token, inventory=protocol.Inventory(
        hostname="bench-fake", agent_version="bench", cpus=2, memory_mib=4096, disk_gib=20, accelerator="tcg"))
    data = bench.tmp / "fake-node"
    data.mkdir()
    agent = bench.spawn("agent", [sys.executable, "-c", AGENT, str(ROOT), str(data), bench.url, str(node.pk), credential])
    bench.on_exit("kill the fake guests", lambda: kill_under(data))
    duration = WARMUP_S + 2 * (SECONDS + 8) + 30
    deployment, replica = bench.replica_on(
        node, hardware, image="sh", args=[f"exec {sys.executable} -c '{WORKLOAD}' {RATE} {duration}"])
    vm = VmPaths(data / "vms" / str(replica.uid))
    pids = (bench.web.pid, agent.pid)
    results = []
    if "rate" in PARTS:
        wait_for(lambda: stored(deployment.pk) > RATE, timeout=120, what="the first second of lines stored")
        say(f"warming up {WARMUP_S:.0f}s at {RATE:,} lines/s ...")
        time.sleep(WARMUP_S)
    for subscribers in SUBSCRIBERS if "rate" in PARTS else ():
        say(f"measuring {SECONDS:.0f}s with {subscribers} subscriber{'s' if subscribers > 1 else ''} ...")
        results.append((f"{RATE:,}/s, {subscribers} subscriber{'s' if subscribers > 1 else ''}", asyncio.run(measure(
            bench, deployment.pk, subscribers, SECONDS, produced=lambda: last_seq(vm), pids=pids))))
    # The delay above includes whatever backlog built up; below, a rate this host sustains shows
    # the path's own delay. The first workload goes (its unshipped backlog with it).
    _stop(replica)
    if "latency" not in PARTS:
        return results
    quiet, quiet_replica = bench.replica_on(
        node, hardware, image="sh", args=[f"exec {sys.executable} -c '{WORKLOAD}' {LATENCY_RATE} {2 * LATENCY_S + 60}"])
    quiet_vm = VmPaths(data / "vms" / str(quiet_replica.uid))
    wait_for(lambda: stored(quiet.pk) > LATENCY_RATE, timeout=120, what="the second workload's lines")
    time.sleep(3)
    for subscribers in SUBSCRIBERS:
        say(f"measuring {LATENCY_S:.0f}s at {LATENCY_RATE:,} lines/s with {subscribers} subscriber(s) ...")
        results.append((f"{LATENCY_RATE:,}/s, {subscribers} subscriber{'s' if subscribers > 1 else ''}", asyncio.run(
            measure(bench, quiet.pk, subscribers, LATENCY_S, produced=lambda: last_seq(quiet_vm), pids=pids))))
    _stop(quiet_replica)
    return results


def _stop(replica) -> None:
    from cloud.deployments.models import Replica
    from cloud.deployments.services.status import replicas_stop
    from django.db import transaction

    with transaction.atomic():
        replicas_stop(Replica.objects.filter(pk=replica.pk), reason="bench phase over")


def chatty_vm(bench: Bench) -> dict:
    """The second figure: a real microVM under the real agent (gantry-agent join + run)."""
    from tests.agent.netns import create_netns

    addr = f"127.0.0.1:{free_port()}"
    state = bench.tmp / "registry"

    def registry(*argv: str) -> None:
        subprocess.run([sys.executable, str(REGISTRY), *argv, "--state-dir", str(state)], check=True,
                       stdout=subprocess.DEVNULL, env=bench.env)

    bench.on_exit("stop the registry", lambda: registry("stop", "--name", f"logbench{RUN}"))
    registry("up", "--addr", addr, "--name", f"logbench{RUN}")
    registry("push-hello", "--registry", addr)
    netns = create_netns("gtblog")
    bench.on_exit("delete the namespace", netns.close)
    made, hardware, _ = bench.node("bench-vm")
    data = bench.tmp / "vm-node"
    data.mkdir()
    env = {**bench.env, "GANTRY_TRUSTED_REGISTRIES": addr}
    cli = [sys.executable, "-m", "nodes.agent"]
    joined = subprocess.run([*cli, "join", "--url", bench.url, "--token", made.join_token, "--data-dir", str(data),
                             "--kit-cache", str(KIT_CACHE)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    if joined.returncode != 0:
        raise RuntimeError(f"join failed: {joined.stdout}{joined.stderr}")
    agent = bench.spawn("vm-agent", [*cli, "run", "--data-dir", str(data), "--kit-cache", str(KIT_CACHE),
                                     "--netns", netns.name, "--bridge", "gtblog0", "--subnet", "192.0.2.0/24",
                                     "--insecure-registry", addr], env=env)
    bench.on_exit("kill the VM", lambda: kill_under(data))
    deployment, replica = bench.replica_on(made.node, hardware, image=f"{addr}/gantry/hello:latest",
                                           entrypoint=["/bin/sh", "-c"], args=[CHATTY])
    wait_for(lambda: stored(deployment.pk) > 2000, timeout=600, what="the VM's first lines")
    time.sleep(3)
    say(f"measuring {VM_SECONDS:.0f}s of a chatty microVM with 1 subscriber ...")
    return asyncio.run(measure(bench, deployment.pk, 1, VM_SECONDS, pids=(bench.web.pid, agent.pid)))


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gantry-logs-bench-"))
    bench = Bench(tmp)
    bench.on_exit("remove the temporary dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = True
    try:
        bench.database()
        bench.plane()
        bench.customer()
        names = {}
        results = synthetic(bench)
        names = {bench.web.pid: "daphne", bench.procs["agent"].pid: "agent"}
        say(f"\nOne agent -> one daphne + PostgreSQL, workload at {RATE:,} lines/s, {SECONDS:.0f}s per run:")
        for label, result in results:
            report(label, result, names)
        for label, result in results:
            if not label.startswith(f"{RATE:,}/s"):
                continue
            ok &= result["rate"] >= TARGET_RATE * 0.98 and result["delays"][1] < TARGET_P99_MS
        for _, result in results:
            ok &= all(series[-1] <= series[0] * 1.15 + 10 for series in result["memory"].values())
        bench.procs["agent"].send_signal(signal.SIGTERM)
        if "vm" in PARTS:
            vm = chatty_vm(bench)
            names[bench.procs["vm-agent"].pid] = "agent"
            say("\nA real chatty microVM (QEMU under TCG) through the real agent, 1 subscriber:")
            report("chatty VM", vm, names)
        say(f"\ntargets: >= {TARGET_RATE:,} lines/s stored for {SECONDS:.0f}s, p99 < {TARGET_P99_MS:.0f} ms, "
            f"memory flat -> {'met' if ok else 'MISSED (see above)'}")
    except Exception:
        for name in bench.procs:
            print(f"--- {name} (tail)\n{bench.runner.tail(name)}", file=sys.stderr)
        raise
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
