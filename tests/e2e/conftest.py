"""The whole cloud on one machine, really started: daphne (HTTP + WebSocket) and a Celery
worker with beat against the test database and Redis, the local OCI registry, and node agents
(`gantry-agent join` + `gantry-agent run`) booting real microVMs (TCG).

Each node's VMs live in a network namespace the test made, joined to this namespace by a veth
pair with TEST-NET-2 addresses (198.51.100.64/26): the node's public address is the namespace's
end, so an endpoint is reached exactly as a customer would, and no VM packet goes anywhere but
into namespaces the test made. The control-plane connection and image pulls stay here.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.agent.conftest_images import local_registry  # noqa: F401  (fixture)
from tests.agent.conftest_vmm import KIT_CACHE, vmm_kit  # noqa: F401  (fixture)
from tests.agent.netns import Netns, create_netns, ip
from tests.e2e.stack import Procs, answers_healthz, daphne_argv, database_url, free_port, wait_for, worker_argv

REPO = Path(__file__).resolve().parents[2]
LIVENESS_S = 8  # short, so a silent node is declared offline within a test


class Plane:
    """daphne + Celery worker (with beat) on the test database, each a process of its own."""

    def __init__(self, tmp: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        run_id = secrets.token_hex(4)
        self.env = {
            **os.environ, "PYTHONPATH": str(REPO), "DJANGO_SETTINGS_MODULE": "cloud.settings",
            "DATABASE_URL": database_url(connection.settings_dict),
            "CELERY_QUEUE": f"e2e-{run_id}", "CHANNELS_PREFIX": f"e2e-{run_id}",
            "NODE_LIVENESS_WINDOW_S": str(LIVENESS_S), "NODE_DRAIN_TIMEOUT_S": "120", "DB_POOL": "0",
            "CACHE_PREFIX": f"e2e-{run_id}", **env,
        }
        self.logs = tmp / "plane-logs"
        self.logs.mkdir()
        self.runner = Procs(self.logs, self.env, REPO)
        self.runner.spawn("web", daphne_argv(self.port))
        self.runner.spawn("worker", worker_argv(self.env["CELERY_QUEUE"], tmp / "beat-schedule"))
        wait_for(lambda: answers_healthz(self.url), timeout=60, what="daphne to answer /healthz")

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return self.runner.procs

    def restart_web(self) -> None:
        """daphne stops (SIGTERM, as a deploy would) and starts again on the same port; every
        socket through it drops, and agents and followers must come back on their own."""
        self.runner.stop("web")
        self.runner.spawn("web", daphne_argv(self.port))
        wait_for(lambda: answers_healthz(self.url), timeout=60, what="daphne to answer /healthz again")

    def log(self, name: str) -> str:
        return self.runner.tail(name, 4000)

    def stop(self) -> None:
        self.runner.stop()


def _drop_stale_veth(address: str) -> None:
    """A run killed before its fixtures cleaned up leaves its host-side veth with this address:
    the kernel would route this run's packets to that pair's dead namespace, and every endpoint
    would refuse. Only our own pairs (named gte*) are removed."""
    for link in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        if link.get("ifname", "").startswith("gte") and any(a.get("local") == address for a in link.get("addr_info", [])):
            ip("link", "del", link["ifname"], check=False)


class Node:
    """One node: a namespace for its VMs behind a veth pair, a data dir, and its agent."""

    def __init__(self, plane: Plane, tmp: Path, hostname: str, index: int, *, hardware: str = "cpu-small",
                 agent_args: tuple[str, ...] = (), gateway_only: bool = False):
        from nodes import services
        from nodes.models import HardwareType, Location

        self.plane, self.hostname = plane, hostname
        self.agent_args = agent_args  # e.g. ("--simulate-gpus", "8xH100"), for join and run alike
        self.gateway_only = gateway_only  # published ports answer only the host's end of the pair
        self.netns: Netns = create_netns("gte2e")
        host_if, ns_if = f"gte{index}h{secrets.token_hex(2)}", f"gte{index}n"
        self.host_if = host_if
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", self.netns.name)
        # 198.51.100.64/26: clear of `make up`'s own pair (198.51.100.0/30) and VM subnet
        # (198.51.100.128/25), which may be up on the same machine while the tests run.
        base = 64 + 4 * index
        _drop_stale_veth(f"198.51.100.{base + 1}")
        ip("addr", "add", f"198.51.100.{base + 1}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", self.netns.name, "addr", "add", f"198.51.100.{base + 2}/30", "dev", ns_if)
        ip("-n", self.netns.name, "link", "set", ns_if, "up")
        self.public_address = f"198.51.100.{base + 2}"
        self.host_address = f"198.51.100.{base + 1}"  # where this namespace sees the host (and a gateway on it) from
        self.data_dir = tmp / hostname
        self.data_dir.mkdir()
        shared_images = tmp.parent / "e2e-images"
        shared_images.mkdir(exist_ok=True)
        (self.data_dir / "images").symlink_to(shared_images)
        made = services.node_create(hostname=hostname, hardware_type=HardwareType.objects.get(slug=hardware),
                                    location=Location.objects.get(slug="us-east"), public_address=self.public_address)
        self.node_id = made.node.pk
        self.join_token = made.join_token
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nodes.agent", *args, "--data-dir", str(self.data_dir),
                               "--kit-cache", str(KIT_CACHE)],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.plane.env)

    def join(self) -> dict:
        out = self.cli("join", "--url", self.plane.url, "--token", self.join_token, *self.agent_args)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start(self) -> None:
        log = open(self.data_dir / "agent.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.agent", "run", "--data-dir", str(self.data_dir), "--kit-cache", str(KIT_CACHE),
             "--netns", self.netns.name, "--bridge", "gte2e0", "--subnet", "192.0.2.0/24",
             "--insecure-registry", "127.0.0.1:5000", *self.agent_args,
             *(("--gateway-address", self.host_address) if self.gateway_only else ())],
            cwd=REPO, env=self.plane.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=30)

    def agent_log(self) -> str:
        path = self.data_dir / "agent.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.netns.close()  # kills what runs in it (QEMU's NIC is there, and QEMU with it)
        # QEMU runs in our namespace with only its NIC in NS: kill every VM of this data dir.
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(self.data_dir).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass
        ip("link", "del", self.host_if, check=False)


@pytest.fixture
def catalog(transactional_db):
    from django.core.management import call_command

    call_command("load_catalog", verbosity=0)


@pytest.fixture
def plane(catalog, tmp_path, local_registry, vmm_kit):  # noqa: F811
    plane = Plane(tmp_path)
    yield plane
    plane.stop()
    # Shown by pytest only when the test failed: what the plane said meanwhile.
    for name in plane.procs:
        print(f"--- {name}.log (tail)\n{plane.log(name)}")


@pytest.fixture
def make_node(plane, tmp_path):
    made: list[Node] = []

    def make(hostname: str, *, start: bool = True, **options) -> Node:
        node = Node(plane, tmp_path, hostname, index=len(made) + 1, **options)
        made.append(node)
        node.join()
        if start:
            node.start()
        return node

    yield make
    for node in made:
        print(f"--- agent of {node.hostname} (tail)\n{node.agent_log()}")
        node.close()


@pytest.fixture
def customer(transactional_db):
    """A tenant with an OAuth2 token, as the README's first calls make one."""
    from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

    tenant = TenantFactory(slug="acme")
    user = UserFactory(username="alice@example.com")
    MembershipFactory(user=user, tenant=tenant, role="owner")
    token = issue_token(user=user, scopes="deployments:read deployments:write templates:read")
    return {"Authorization": f"Bearer {token.token}", "X-Tenant": "acme"}
