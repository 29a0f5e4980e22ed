"""End-to-end start benchmark: API create -> deployment `running` -> endpoint answers, for
`hello` on a local node, beside the microVM runtime's own warm start measured in the same run.

What it starts, all of it its own and all of it removed at the end (even on failure or SIGTERM):
  - a PostgreSQL database `<DATABASE_URL name>_e2e_bench_<run>`, created, migrated and loaded
    with the catalog, and dropped afterwards;
  - a docker-registry on a free loopback port with gantry/hello pushed (scripts/registry, the
    same script as `make registry`), which the `hello` template of that database points at;
  - daphne and a Celery worker with beat, on a Celery queue, channel-layer and cache prefix of
    this run (`e2e-bench-<run>`), as `make up` runs them (with the DB connection pool);
  - one node: `gantry-agent join` + `gantry-agent run --netns NS`, NS a namespace of its own
    joined to this one by a veth pair with TEST-NET-2 addresses (the node's public address is
    the namespace's end, so the endpoint is reached exactly as a customer reaches it);
  - for the runtime alone: a MicroVmRuntime built as the agent builds it (build_runtime), its
    VMs' network in a second namespace, sharing the node's image cache and the guest kit
    (/var/cache/gantry-agent-test/kit, the tests' and bench/coldstart.py's).
No packet goes anywhere but loopback and these namespaces; the VMs' subnet is TEST-NET-2 too.

A priming pair (not counted) pulls the image into the cache and warms both paths; then
PAIRS pairs (default 5, env BENCH_E2E_PAIRS) alternate which of the two goes first. The runtime
alone is `MicroVmRuntime.start` of the very spec the plane sends (replica_spec of the primed
replica), timed from the call to its return (workload started and health check passed), as
bench/coldstart.py times a warm start. The plane path is timed from the POST to the first answer
of the endpoint the API hands out; its phases come from the Replica row and its events (plane
clock), the agent's log (the agent's clock: the same host) and the bench's own clock.

Target (issue 14): the control plane adds under 0.5 s to what the runtime takes. Judged on the
median over runs of (POST -> endpoint answers) minus that same run's runtime.start in the agent
(from the agent's log), which the boot-time noise of this host cancels out of; the per-pair
difference against the runtime alone is printed beside it as the cross-check, with a note when
the runtime alone varies between runs by more than the target (TCG boots on a busy host do, by
seconds), as does the agent's runtime.start against the runtime alone (the plane's processes
slowing the VM's boot would show there).
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit import (Cleanups, Procs, admin_sql, answers_healthz, daphne_argv, free_link, free_port,  # noqa: E402
                       kill_under, plane_secrets, say, wait_for, worker_argv)
from bench.kit.start_report import report  # noqa: E402
from bench.kit.start_marks import _log_ts, _celery_ts, _stat, _cpu_of, _group_cpu, _vm_cpu, _host_busy  # noqa: E402
REGISTRY = ROOT / "scripts" / "registry" / "registry.py"
STATE_DIR = Path(os.environ.get("STATE_DIR", ROOT / ".state"))
KIT_CACHE = Path(os.environ.get("GANTRY_TEST_KIT_CACHE", "/var/cache/gantry-agent-test"))  # the tests' kit cache

RUN = secrets.token_hex(3)
TAG = f"e2e-bench-{RUN}"
PAIRS = int(os.environ.get("BENCH_E2E_PAIRS", "5"))
TARGET_S = 0.5
START_TIMEOUT_S = 240.0
POLL_S = 0.01  # how often the bench looks at the deployment row / the endpoint
BRIDGE = "gbe2e0"
VM_SUBNET = "198.51.100.128/26"  # inside the namespaces only
# The node's veth pair: a free /30 of 198.51.100.32/27, clear of make up's local node (.0/30 on
# the host, .128/25 inside its namespace) and of the e2e tests' pairs (.64/26).
LINK_CANDIDATES = [f"198.51.100.{n}/30" for n in range(60, 28, -4)]

_base = os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry")
_parts = urlsplit(_base)
_ADMIN_URL = urlunsplit(_parts._replace(path="/postgres"))
DB_NAME = f"{_parts.path.strip('/')}_e2e_bench_{RUN}"
DB_URL = urlunsplit(_parts._replace(path="/" + DB_NAME))
_USER_DB_POOL = os.environ.get("DB_POOL")
os.environ["DATABASE_URL"] = DB_URL
os.environ["DJANGO_SETTINGS_MODULE"] = "cloud.settings"
os.environ["DB_POOL"] = "0"  # the bench's own process only; the plane runs with its pool
os.environ["CHANNELS_PREFIX"] = TAG
os.environ["CELERY_QUEUE"] = TAG
os.environ["CACHE_PREFIX"] = TAG
os.environ.setdefault("TENANT_DEFAULT_BALANCE", "1000")  # the bench tenant's trial credit
plane_secrets()  # the plane refuses the development key (cloud/production.py)


# -- the bench ---------------------------------------------------------------------------------


class Bench(Cleanups):
    def __init__(self, tmp: Path):
        super().__init__()
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DB_POOL"},
            "PYTHONPATH": str(ROOT), "API_RATE_LIMIT": "1000000/min", "TENANT_DEFAULT_MAX_DEPLOYMENTS": "1000",
        }
        if _USER_DB_POOL is not None:
            self.env["DB_POOL"] = _USER_DB_POOL
        (tmp / "logs").mkdir()
        self.procs = Procs(tmp / "logs", self.env, ROOT)

    def close(self) -> None:
        super().close()
        self.loop.close()

    # -- set-up ---------------------------------------------------------------------------------
    def database(self) -> None:
        admin_sql(_ADMIN_URL, f'CREATE DATABASE "{DB_NAME}"')
        self.on_exit("drop the database", self._drop_database)
        import django

        django.setup()
        logging_quiet()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("load_catalog", verbosity=0, stdout=io.StringIO())

    def _drop_database(self) -> None:
        from django.db import connections

        connections.close_all()
        admin_sql(_ADMIN_URL, f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')

    def registry(self) -> str:
        addr = f"127.0.0.1:{free_port()}"
        state = self.tmp / "registry"

        def script(*argv: str) -> None:
            subprocess.run([sys.executable, str(REGISTRY), *argv, "--state-dir", str(state)], check=True,
                           stdout=subprocess.DEVNULL, env=self.env)

        self.on_exit("stop the registry", lambda: script("stop", "--name", "benchreg"))
        # Agents pull from loopback registries only when the operator trusts them.
        os.environ["GANTRY_TRUSTED_REGISTRIES"] = self.env["GANTRY_TRUSTED_REGISTRIES"] = addr
        script("up", "--addr", addr, "--name", "benchreg")
        script("push-hello", "--registry", addr)
        from templates.models import Template

        Template.objects.filter(slug="hello", tenant__isnull=True).update(image=f"{addr}/gantry/hello:latest")
        self.registry_addr = addr
        return addr

    def customer(self) -> dict[str, str]:
        from datetime import timedelta

        from django.contrib.auth import get_user_model
        from django.utils import timezone
        from oauth2_provider.models import AccessToken, Application

        from accounts.services import email_mark_confirmed, tenant_create

        user = get_user_model().objects.create(username="bench@example.com", email="bench@example.com")
        email_mark_confirmed(user=user, how="operator")  # the trial credit needs a confirmed address
        tenant_create(slug="bench", name="Bench", owner=user)  # with its trial credit (TENANT_DEFAULT_BALANCE)
        app = Application.objects.create(name="bench", client_type=Application.CLIENT_PUBLIC,
                                         authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                                         redirect_uris="http://127.0.0.1/cb", user=user)
        token = AccessToken.objects.create(user=user, application=app, token=secrets.token_hex(16),
                                           scope="deployments:read deployments:write templates:read",
                                           expires=timezone.now() + timedelta(hours=2))
        return {"Authorization": f"Bearer {token.token}", "X-Tenant": "bench"}

    def plane(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.on_exit("stop daphne and the worker", self.procs.stop)
        self.procs.spawn("web", daphne_argv(port))
        self.procs.spawn("worker", worker_argv(TAG, self.tmp / "beat-schedule"))

        def healthy() -> bool:
            for name, proc in self.procs.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.procs.tail(name)}")
            return answers_healthz(self.url)

        wait_for(healthy, timeout=90, what="daphne to answer /healthz", interval=0.25)
        return self.url

    def node(self) -> None:
        from nodes import services
        from nodes.models import HardwareType, Location, Node
        from tests.agent.netns import create_netns, ip

        link = free_link(LINK_CANDIDATES)
        host_addr, ns_addr = (f"{h}/{link.prefixlen}" for h in list(link.hosts())[:2])
        self.netns = create_netns("gbe2e")
        self.on_exit("delete the node's namespace", self.netns.close)
        self.host_if = f"gbe{RUN}"
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", "uplink0", "netns", self.netns.name)
        self.on_exit("delete the veth pair", lambda: ip("link", "del", self.host_if, check=False))
        ip("addr", "add", host_addr, "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("-n", self.netns.name, "addr", "add", ns_addr, "dev", "uplink0")
        ip("-n", self.netns.name, "link", "set", "uplink0", "up")
        self.public_address = ns_addr.split("/")[0]

        self.node_dir = self.tmp / "node"
        self.node_dir.mkdir()
        self.on_exit("kill the node's VMs", lambda: kill_under(self.node_dir))
        made = services.node_create(hostname="bench-cpu-1", hardware_type=HardwareType.objects.get(slug="cpu-small"),
                                    location=Location.objects.get(slug="us-east"), public_address=self.public_address)
        self.node_id = made.node.pk
        common = ["--data-dir", str(self.node_dir), "--kit-cache", str(KIT_CACHE)]
        joined = subprocess.run([sys.executable, "-m", "nodes.agent", "join", "--url", self.url,
                                 "--token", made.join_token, *common],
                                capture_output=True, text=True, timeout=120, cwd=ROOT, env=self.env)
        if joined.returncode != 0:
            raise RuntimeError(f"gantry-agent join failed: {joined.stdout}{joined.stderr}")
        self.agent_log = self.tmp / "logs" / "agent.log"
        self.procs.spawn("agent", [sys.executable, "-m", "nodes.agent", "run", *common, "--netns", self.netns.name,
                                   "--bridge", BRIDGE, "--subnet", VM_SUBNET,
                                   "--insecure-registry", self.registry_addr])
        # First of all at the end: no agent may act on VMs or a namespace being torn down.
        self.on_exit("stop the agent", lambda: self.procs.stop("agent"))

        def online() -> bool:
            if self.procs.procs["agent"].poll() is not None:
                raise RuntimeError(f"the agent exited:\n{self.procs.tail('agent')}")
            return Node.objects.get(pk=self.node_id).status == Node.Status.ONLINE

        wait_for(online, timeout=180, what="the node to come online", interval=0.25)

    def direct_runtime(self) -> None:
        from nodes.agent.runtime_build import build_runtime
        from tests.agent.netns import create_netns

        self.direct_ns = create_netns("gbe2e-rt")
        self.on_exit("delete the runtime's namespace", self.direct_ns.close)
        data = self.tmp / "direct"
        data.mkdir()
        self.on_exit("kill the runtime's VMs", lambda: kill_under(data))
        # The node's image cache, so both start from the same warm cache.
        (data / "images").symlink_to(self.node_dir / "images", target_is_directory=True)
        self.runtime = build_runtime(data_dir=data, netns=self.direct_ns.name, bridge=BRIDGE,
                                     subnet=ipaddress.IPv4Network(VM_SUBNET),
                                     insecure_registries=[self.registry_addr], kit_cache=KIT_CACHE)
        self.on_exit("close the runtime", self._close_runtime)
        _kit, self.accel = self.loop.run_until_complete(self.runtime.host())

    def _close_runtime(self) -> None:
        # A start interrupted by a failure or a signal is cancelled first: the runtime then
        # kills its VM and releases its TAP and port, as for any cancelled start.
        async def settle() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.runtime.close()

        self.loop.run_until_complete(settle())

    # -- one start each way ------------------------------------------------------------------
    def through_plane(self, http, web, n: int) -> dict[str, float | None]:
        """`http`: the API client; `web`: the client that calls the endpoint (one for the whole
        run, so no call pays for building a client)."""
        import httpx

        from cloud.deployments.models import Deployment, Event, Replica
        from nodes.models import HardwareType

        log_offset = self.agent_log.stat().st_size
        worker_log = self.tmp / "logs" / "worker.log"
        worker_offset = worker_log.stat().st_size
        body = {"name": f"hello-{n}", "template_id": "hello", "gpus_per_container": 0,
                "hardware_id": HardwareType.objects.get(slug="cpu-small").pk, "replica_count": 1}
        cpu0 = {name: _group_cpu(proc.pid) for name, proc in self.procs.procs.items() if name in ("web", "worker", "agent")}
        busy0 = _host_busy()
        t0 = time.time()
        response = http.post("/deployments", json=body)
        t_post = time.time()
        if response.status_code != 201:
            raise RuntimeError(f"POST /deployments: {response.status_code} {response.text[:300]}")
        deployment_id = response.json()["deployment"]["id"]

        def running():
            status = Deployment.objects.filter(pk=deployment_id).values_list("status", flat=True).first()
            if status in ("failed", "stopped", "expired"):
                raise RuntimeError(f"deployment {deployment_id} {status}:\n{self.procs.tail('agent')}")
            return status == "running"

        wait_for(running, timeout=300, what="the deployment to run", interval=POLL_S)
        t_seen = time.time()
        http.get(f"/deployments/{deployment_id}").json()["deployment"]
        t_api = time.time()
        # The replica's direct address, as the API gives it: this bench runs no gateway
        # (bench/gateway.py measures what one adds).
        (url,) = [r["endpoint"] for r in http.get(f"/deployments/{deployment_id}/replicas", params={"live": "true"})
                  .json()["replicas"] if r["endpoint"]]

        def answers() -> bool:
            try:
                return "Hello" in web.get(url).text
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=60, what=f"{url} to answer", interval=POLL_S)
        t_answer = time.time()
        busy = _host_busy() - busy0
        replica = Replica.objects.get(deployment_id=deployment_id)
        cpu = {f"cpu_{name}": _group_cpu(self.procs.procs[name].pid) - c for name, c in cpu0.items()}
        cpu["cpu_qemu"] = _vm_cpu(self.node_dir / "vms" / str(replica.uid))
        cpu["cpu_host"] = busy

        self.last_replica = replica
        events = {}
        for kind, ts in Event.objects.filter(deployment_id=deployment_id).order_by("id").values_list("type", "ts"):
            events.setdefault(kind, ts.timestamp())
        agent = self._agent_marks(str(replica.uid), log_offset)
        task = self._task_marks(worker_log, worker_offset, after=replica.created_at.timestamp())

        # Stop it and wait until the node has removed the VM, so the next start has the host to itself.
        assert http.post(f"/deployments/{deployment_id}/stop").status_code == 200
        wait_for(lambda: Deployment.objects.get(pk=deployment_id).status == "stopped", timeout=120,
                 what="the deployment to stop")
        wait_for(lambda: not (self.node_dir / "vms" / str(replica.uid)).exists(), timeout=60,
                 what="the agent to remove the VM")

        return {
            "t0": t0, "post": t_post, "created": replica.created_at.timestamp(), "placed": replica.placed_at.timestamp(),
            **task, **agent, **cpu,
            "ev_placed": events.get("replica.placed"), "ev_pulling": events.get("replica.pulling"),
            "ev_booting": events.get("replica.booting"), "ev_starting": events.get("replica.starting"),
            "ev_running": events.get("replica.running"), "dep_running": events.get("deployment.running"),
            "seen": t_seen, "api": t_api, "answer": t_answer,
        }

    def _agent_marks(self, uid: str, offset: int) -> dict[str, float | None]:
        marks: dict[str, float | None] = {}
        patterns = {
            "a_command": f"replica.start {uid} ", "a_start": f"starting {uid} (image",
            "a_booting": f"{uid}: booting", "a_starting": f"{uid}: starting", "a_running": f"{uid}: running",
            "a_returned": f"{uid} is running",
        }
        with open(self.agent_log, errors="replace") as f:
            f.seek(offset)
            for line in f:
                for key, needle in patterns.items():
                    if key not in marks and needle in line:
                        marks[key] = _log_ts(line)
        return {key: marks.get(key) for key in patterns}

    @staticmethod
    def _task_marks(path: Path, offset: int, *, after: float) -> dict[str, float | None]:
        """When the worker received the first schedule_pending task queued after the replica
        row was written (the POST's kick), and when it finished it (Celery's own log lines;
        an earlier kick, from the last stop, is not this one)."""
        received = done = None
        task_id = None
        with open(path, errors="replace") as f:
            f.seek(offset)
            for line in f:
                m = re.search(r"deployments\.schedule_pending\[([0-9a-f-]+)\]", line)
                if not m:
                    continue
                ts = _celery_ts(line)
                if task_id is None and " received" in line and ts is not None and ts >= after - 0.001:
                    task_id, received = m.group(1), ts
                elif task_id == m.group(1) and " succeeded " in line:
                    done = ts
                    break
        return {"task_received": received, "task_done": done}

    def runtime_alone(self, spec, n: int) -> dict[str, float | None]:
        name = f"bench-direct-{n}"
        queue = self.runtime.subscribe()
        own0, busy0 = _cpu_of(_stat(os.getpid())), _host_busy()
        t0 = time.time()
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.runtime.start(replace(spec, name=name)), START_TIMEOUT_S))
        except asyncio.TimeoutError:
            raise RuntimeError(f"MicroVmRuntime.start of {name} took over {START_TIMEOUT_S:.0f}s") from None
        wall = time.time() - t0
        cpu = {"cpu_host": _host_busy() - busy0, "cpu_bench": _cpu_of(_stat(os.getpid())) - own0,
               "cpu_qemu": _vm_cpu(self.runtime.data_dir / "vms" / name)}
        marks: dict[str, float] = {}
        while not queue.empty():
            ev = queue.get_nowait()
            if ev.name == name:
                marks.setdefault(ev.state, ev.ts)
        self.loop.run_until_complete(self.runtime.remove(name))
        return {"wall": wall, "t0": t0, **cpu, **{f"r_{k}": v for k, v in marks.items()}}


def run(bench: Bench) -> int:
    import httpx

    from nodes.agent.guest.kit import ensure_kit

    t = time.monotonic()
    KIT_CACHE.mkdir(parents=True, exist_ok=True)
    bench.loop.run_until_complete(ensure_kit(KIT_CACHE))
    bench.database()
    bench.registry()
    headers = bench.customer()
    bench.plane()
    bench.node()
    bench.direct_runtime()
    say(f"set up in {time.monotonic() - t:.0f} s: database {DB_NAME}, registry {bench.registry_addr}, plane "
        f"{bench.url} (queue and prefixes {TAG}), node at {bench.public_address} (namespace {bench.netns.name})")

    from cloud.deployments.services.agents import replica_spec

    plane, alone = [], []
    with httpx.Client(base_url=f"{bench.url}/api/v1", headers=headers, timeout=30) as http, \
            httpx.Client(timeout=2) as web:
        # Priming: the first plane start pulls hello into the node's cache, the first runtime
        # start sets its namespace's bridge up; neither is counted.
        primed = bench.through_plane(http, web, 0)
        spec = replica_spec(bench.last_replica, gpu_bdfs=[])
        primed_alone = bench.runtime_alone(spec, 0)
        say(f"priming (not counted): plane {(primed['answer'] - primed['t0']) * 1000:.0f} ms (pull included), "
            f"runtime {primed_alone['wall'] * 1000:.0f} ms")
        for i in range(1, PAIRS + 1):
            # Alternate the order, so drift in the host's speed favours neither side.
            if i % 2:
                alone.append(bench.runtime_alone(spec, i))
                plane.append(bench.through_plane(http, web, i))
            else:
                plane.append(bench.through_plane(http, web, i))
                alone.append(bench.runtime_alone(spec, i))
            say(f"  pair {i}: runtime {alone[-1]['wall'] * 1000:.0f} ms, plane "
                f"{(plane[-1]['answer'] - plane[-1]['t0']) * 1000:.0f} ms")
    report(bench, plane, alone, target_s=TARGET_S)
    return 0


def logging_quiet() -> None:
    import logging

    for name in ("httpx", "nodes", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> int:
    if os.geteuid() != 0:
        print("e2e_start: needs root (network namespaces, TAPs, QEMU)", file=sys.stderr)
        return 1
    main_pid = os.getpid()

    def terminated(*_):
        if os.getpid() != main_pid:
            # A fork of ours (pyroute2 forks to open a socket in a namespace, then SIGTERMs the
            # child): a SystemExit there would strand the child in its copy of our thread pool.
            os._exit(143)
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminated)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where it is
    tmp = Path(tempfile.mkdtemp(prefix="gantry-e2e-bench-"))
    bench = Bench(tmp)
    ok = False
    try:
        code = run(bench)
        ok = True
        return code
    finally:
        if not ok:
            for name in ("agent", "worker", "web"):
                if name in bench.procs.procs:
                    print(f"--- {name}.log (tail)\n{bench.procs.tail(name)}", file=sys.stderr)
        bench.close()
        _clear_redis()
        shutil.rmtree(tmp, ignore_errors=True)


def _clear_redis() -> None:
    """This run's keys: its Celery queue and bindings, channel-layer groups, cache entries."""
    try:
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        keys = [k for pattern in (f"*{TAG}*",) for k in client.scan_iter(match=pattern, count=1000)]
        if keys:
            client.delete(*keys)
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: redis keys of {TAG}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
