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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
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


def say(msg: str) -> None:
    print(msg, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _admin(*statements: str) -> None:
    import psycopg

    with psycopg.connect(urlunsplit(_parts._replace(path="/postgres")), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def _wait(check, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def _log_ts(line: str) -> float | None:
    """The time of a `%(asctime)s ...` line (the agent's logging format; local time, ms)."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def _celery_ts(line: str) -> float | None:
    """The time of a Celery worker log line: `[2024-01-01 12:00:00,123: INFO/...]`."""
    try:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _cpu_of(fields: list[str] | None) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0  # utime + stime


def _group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of one process group (a process we
    spawned with start_new_session, its children included)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            fields = _stat(proc.name)
            if fields and int(fields[2]) == pgid:
                total += _cpu_of(fields)
    return total


def _vm_cpu(vm_dir: Path) -> float | None:
    """CPU seconds used so far by the QEMU of a VM dir (QEMU runs in a session of its own)."""
    needle = str(vm_dir).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes() and b"qemu" in (proc / "comm").read_bytes():
                return _cpu_of(_stat(proc.name))
        except OSError:
            pass
    return None


def _host_busy() -> float:
    """CPU seconds all cores of this host have been busy (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


class Procs:
    """Processes of this run, each in a session of its own, killed as a group at the end."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "a")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, *names: str) -> None:
        """SIGTERM, then SIGKILL after 15 s, to each named process group (all if none named)."""
        procs = [p for name, p in self.procs.items() if not names or name in names]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


def _kill_under(path: Path) -> None:
    """SIGKILL every process whose command line names `path` (QEMU of our VMs, our agent)."""
    needle = str(path).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and needle in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _pick_link() -> ipaddress.IPv4Network:
    from tests.agent.netns import ip

    used = []
    for line in ip("-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("local", "broadcast", "unicast", "multicast") and len(line.split()) > 1:
            dest = line.split()[1]
        try:
            used.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            pass
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            used.append(ipaddress.ip_interface(m.group(1)).network)
    for cand in map(ipaddress.ip_network, LINK_CANDIDATES):
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError("no free /30 in 198.51.100.32/27 for the node's veth pair")


# -- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.cleanups: list[tuple[str, object]] = []
        self.loop = asyncio.new_event_loop()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DB_POOL"},
            "PYTHONPATH": str(ROOT), "API_RATE_LIMIT": "1000000/min", "TENANT_DEFAULT_MAX_DEPLOYMENTS": "1000",
        }
        if _USER_DB_POOL is not None:
            self.env["DB_POOL"] = _USER_DB_POOL
        (tmp / "logs").mkdir()
        self.procs = Procs(tmp / "logs", self.env)

    def on_exit(self, what: str, fn) -> None:
        self.cleanups.append((what, fn))

    def close(self) -> None:
        for what, fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every other cleanup must still run
                print(f"cleanup: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        self.loop.close()

    # -- set-up ---------------------------------------------------------------------------------
    def database(self) -> None:
        _admin(f'CREATE DATABASE "{DB_NAME}"')
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
        _admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')

    def registry(self) -> str:
        addr = f"127.0.0.1:{_free_port()}"
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

        from accounts.services import tenant_create

        user = get_user_model().objects.create(username="bench@example.com", email="bench@example.com")
        tenant_create(slug="bench", name="Bench", owner=user)  # with its trial credit (TENANT_DEFAULT_BALANCE)
        app = Application.objects.create(name="bench", client_type=Application.CLIENT_PUBLIC,
                                         authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                                         redirect_uris="http://127.0.0.1/cb", user=user)
        token = AccessToken.objects.create(user=user, application=app, token=secrets.token_hex(16),
                                           scope="deployments:read deployments:write templates:read",
                                           expires=timezone.now() + timedelta(hours=2))
        return {"Authorization": f"Bearer {token.token}", "X-Tenant": "bench"}

    def plane(self) -> str:
        import httpx

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.on_exit("stop daphne and the worker", self.procs.stop)
        self.procs.spawn("web", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "cloud.asgi:application"])
        self.procs.spawn("worker", [str(BIN / "celery"), "-A", "cloud", "worker", "-B", "--concurrency", "2",
                                    "-Q", TAG, "--schedule", str(self.tmp / "beat-schedule"), "--loglevel", "INFO"])

        def healthy() -> bool:
            for name, proc in self.procs.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.procs.tail(name)}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, timeout=90, what="daphne to answer /healthz", interval=0.25)
        return self.url

    def node(self) -> None:
        from nodes import services
        from nodes.models import HardwareType, Location, Node
        from tests.agent.netns import create_netns, ip

        link = _pick_link()
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
        self.on_exit("kill the node's VMs", lambda: _kill_under(self.node_dir))
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

        _wait(online, timeout=180, what="the node to come online", interval=0.25)

    def direct_runtime(self) -> None:
        from nodes.agent.cli import build_runtime
        from tests.agent.netns import create_netns

        self.direct_ns = create_netns("gbe2e-rt")
        self.on_exit("delete the runtime's namespace", self.direct_ns.close)
        data = self.tmp / "direct"
        data.mkdir()
        self.on_exit("kill the runtime's VMs", lambda: _kill_under(data))
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

        _wait(running, timeout=300, what="the deployment to run", interval=POLL_S)
        t_seen = time.time()
        deployment = http.get(f"/deployments/{deployment_id}").json()["deployment"]
        t_api = time.time()
        (endpoint,) = deployment["endpoints"]

        def answers() -> bool:
            try:
                return "Hello" in web.get(endpoint["url"]).text
            except httpx.HTTPError:
                return False

        _wait(answers, timeout=60, what=f"{endpoint['url']} to answer", interval=POLL_S)
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
        _wait(lambda: Deployment.objects.get(pk=deployment_id).status == "stopped", timeout=120,
              what="the deployment to stop")
        _wait(lambda: not (self.node_dir / "vms" / str(replica.uid)).exists(), timeout=60,
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


# -- report ------------------------------------------------------------------------------------


def _med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ms(seconds: float | None) -> str:
    return "     -" if seconds is None else f"{seconds * 1000:6.0f}"


def _span(run: dict, a: str, b: str) -> float | None:
    return run[b] - run[a] if run.get(a) is not None and run.get(b) is not None else None


PLANE_STEPS = [
    # (label, from, to): each from the bench's, the plane's or the agent's clock, all this host's
    ("POST /deployments answered (201)", "t0", "post"),
    ("  of which: POST sent -> replica row written", "t0", "created"),
    ("replica row written -> worker has the scheduler kick", "created", "task_received"),
    ("worker has the kick -> replica placed", "task_received", "placed"),
    ("replica placed -> agent has replica.start", "placed", "a_command"),
    ("agent has it -> runtime.start called", "a_command", "a_start"),
    ("runtime.start -> first report recorded (pulling)", "a_start", "ev_pulling"),
    ("pulling recorded -> booting recorded", "ev_pulling", "ev_booting"),
    ("booting recorded -> starting recorded", "ev_booting", "ev_starting"),
    ("starting recorded -> running recorded", "ev_starting", "ev_running"),
    ("replica running -> deployment running", "ev_running", "dep_running"),
    ("deployment running -> bench sees it (DB, 10 ms poll)", "dep_running", "seen"),
    ("GET /deployments/{id} (endpoint URL)", "seen", "api"),
    ("GET endpoint -> 'Hello from Gantry'", "api", "answer"),
]
AGENT_STEPS = [
    ("runtime.start called -> booting", "a_start", "a_booting"),
    ("booting -> starting (QEMU, kernel, /init)", "a_booting", "a_starting"),
    ("starting -> running (health check)", "a_starting", "a_running"),
    ("agent running -> plane recorded running", "a_running", "ev_running"),
]
CUMULATIVE = [
    ("placed", "placed"), ("agent has replica.start", "a_command"), ("first report (pulling) recorded", "ev_pulling"),
    ("booting recorded", "ev_booting"), ("running recorded", "ev_running"), ("deployment running", "dep_running"),
    ("endpoint answers", "answer"),
]


def _runs(values) -> str:
    return ", ".join(_ms(v).strip() for v in values)


def report(bench: Bench, plane: list[dict], alone: list[dict]) -> None:
    plane_total = [r["answer"] - r["t0"] for r in plane]
    alone_total = [r["wall"] for r in alone]
    in_agent = [_span(r, "a_start", "a_returned") for r in plane]
    own = [t - a for t, a in zip(plane_total, in_agent) if a is not None]  # the plane's part of each run
    diffs = [p - a for p, a in zip(plane_total, alone_total)]
    slower = [a - b for a, b in zip(in_agent, alone_total) if a is not None]
    say(f"\nhello on one local cpu-small node, accelerator {bench.accel.name}; {len(plane)} pairs after a priming "
        f"pair (not counted); medians, ms:")
    say(f"  runtime alone: MicroVmRuntime.start, warm image cache and kit   {_ms(_med(alone_total))}   runs: {_runs(alone_total)}")
    say(f"  through the plane: POST /deployments -> endpoint answers        {_ms(_med(plane_total))}   runs: {_runs(plane_total)}")
    say(f"    of which the agent's own MicroVmRuntime.start                {_ms(_med(in_agent))}   runs: {_runs(in_agent)}")
    say(f"    the rest: what the plane adds around it                       {_ms(_med(own))}   runs: {_runs(own)}")
    say(f"  difference, plane - runtime alone (per pair)                    {_ms(_med(diffs))}   runs: {_runs(diffs)}")
    say(f"  agent's runtime.start - runtime alone (per pair)                {_ms(_med(slower))}   runs: {_runs(slower)}")

    say("\nthrough the plane, step by step (median ms; the bench's, the plane's and the agent's clocks, one host):")
    for label, a, b in PLANE_STEPS:
        say(f"  {label:52} {_ms(_med(_span(r, a, b) for r in plane))}")
    say("  inside the agent (its log):")
    for label, a, b in AGENT_STEPS:
        say(f"    {label:50} {_ms(_med(_span(r, a, b) for r in plane))}")
    alone_steps = [("start() -> booting (resolve cached image)", "t0", "r_booting"),
                   ("booting -> starting (QEMU, kernel, /init)", "r_booting", "r_starting"),
                   ("starting -> running (health check)", "r_starting", "r_running")]
    say("  the runtime alone, same steps:")
    for label, a, b in alone_steps:
        say(f"    {label:50} {_ms(_med(_span(r, a, b) for r in alone))}")
    say("  cumulative from the POST: " + "; ".join(
        f"{label} {_ms(_med(_span(r, 't0', key) for r in plane)).strip()}" for label, key in CUMULATIVE))
    before = _med(_span(r, "t0", "a_start") for r in plane)
    after = _med(_span(r, "a_returned", "answer") for r in plane)
    say(f"  the plane's part: {_ms(before).strip()} ms before the agent calls runtime.start (API, scheduler kick, "
        f"placement, replica.start), {_ms(after).strip()} ms after it returns (running report, status, API, endpoint)")

    def cpu(runs: list[dict], key: str) -> str:
        return _ms(_med(r.get(key) for r in runs)).strip()

    cores = os.cpu_count() or 1
    for r in plane:
        r["cpu_rest"] = r["cpu_host"] - sum(r.get(k) or 0 for k in ("cpu_qemu", "cpu_agent", "cpu_web", "cpu_worker"))
    for r in alone:
        r["cpu_rest"] = r["cpu_host"] - sum(r.get(k) or 0 for k in ("cpu_qemu", "cpu_bench"))
    say(f"  CPU time used during a start (median ms; {cores} cores): through the plane: QEMU {cpu(plane, 'cpu_qemu')}, "
        f"agent {cpu(plane, 'cpu_agent')}, daphne {cpu(plane, 'cpu_web')}, Celery {cpu(plane, 'cpu_worker')}, the rest "
        f"of the host {cpu(plane, 'cpu_rest')} (PostgreSQL and everything not ours); runtime alone: QEMU "
        f"{cpu(alone, 'cpu_qemu')}, the bench's runtime {cpu(alone, 'cpu_bench')}, the rest of the host "
        f"{cpu(alone, 'cpu_rest')}")

    added = _med(own)
    spread = max(alone_total) - min(alone_total)
    cross = _med(diffs)
    say(f"\nthe control plane adds {_ms(added).strip()} ms to what the runtime takes (median over runs of POST -> "
        f"endpoint answers minus that run's own runtime.start) (target < {TARGET_S * 1000:.0f} ms): "
        f"{'OK' if added is not None and added < TARGET_S else 'MISSED'}")
    if spread > TARGET_S:
        say(f"  cross-check against the runtime alone: {_ms(cross).strip()} ms (median per-pair difference), but the "
            f"runtime alone varies by {spread * 1000:.0f} ms between runs on this host (more than the target), so "
            f"pairs cannot resolve 0.5 s here (the agent's runtime.start differed from the runtime alone by "
            f"{_ms(_med(slower)).strip()} ms, median per pair, runs {_runs(slower)}: the same code on the same spec, "
            f"so what differed is the VM's boot: compare the rest of the host's CPU above)")
    else:
        say(f"  cross-check against the runtime alone: {_ms(cross).strip()} ms (median per-pair difference) "
            f"(target < {TARGET_S * 1000:.0f} ms): {'OK' if cross < TARGET_S else 'MISSED'}")


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
    report(bench, plane, alone)
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
