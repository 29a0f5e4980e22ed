"""The real gateway (`python -m gateway run`, real HAProxy) inside a namespace the test made.

A veth pair joins the test's namespace to this one: host side HOST_IP, namespace side
GATEWAY_IP (198.51.100.32/28 is the gateway tests' own; nothing else uses it). The gateway and
the backends (tests/gateway/backend.py) run inside; the test's clients run here and reach them
on GATEWAY_IP, so X-Forwarded-For says HOST_IP. One gateway per test module (module-scoped).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.netns import Netns, configure, create_netns, ip
from tests.gateway.tables import push_body

REPO = Path(__file__).resolve().parents[2]
HOST_IP = "198.51.100.33"
GATEWAY_IP = "198.51.100.34"
HTTPS_PORT, HTTP_PORT, CONTROL_PORT = 443, 80, 8080
TOKEN = "gw-test-" + secrets.token_hex(16)
READY_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def gw_netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = create_netns("gtgw")
    host_if = f"gw{secrets.token_hex(4)}"
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        configure(ns, "eth0", f"{GATEWAY_IP}/30")
        yield ns
    finally:
        ns.close()  # takes the namespace's end of the pair, and with it ours
        ip("link", "del", host_if, check=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gateway-ca")
    subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(directory), "--domain", "gantry.localhost"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    return directory


class GatewayRun:
    """`python -m gateway run` in the namespace; its output (HAProxy's too) goes to a file."""

    def __init__(self, ns: Netns, directory: Path, certs: Path, *extra: str):
        self.ns = ns
        self.directory = directory
        self.state_dir = directory / "state"
        self.log = directory / "gateway.log"
        (directory / "token").write_text(TOKEN + "\n")
        self.argv = ns.argv(
            sys.executable, "-m", "gateway", "run", "--state-dir", str(self.state_dir),
            "--cert", str(certs / "gateway.pem"), "--https-bind", f"{GATEWAY_IP}:{HTTPS_PORT}",
            "--http-bind", f"{GATEWAY_IP}:{HTTP_PORT}", "--control-bind", f"{GATEWAY_IP}:{CONTROL_PORT}",
            "--token-file", str(directory / "token"), *extra)
        self.process: subprocess.Popen | None = None
        self.control = httpx.Client(base_url=f"http://{GATEWAY_IP}:{CONTROL_PORT}", timeout=60,
                                    headers={"Authorization": f"Bearer {TOKEN}"})

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"gateway ready control=" not in self.log.read_bytes()[offset:]:
            if self.process.poll() is not None:
                raise AssertionError(f"the gateway exited {self.process.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not get ready: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def said(self, text: str) -> bool:
        """Whether the gateway's output (HAProxy's included) has `text` anywhere."""
        return text in self.log.read_text(errors="replace")

    def push(self, table: dict) -> dict:
        response = self.control.put("/v1/routes", content=push_body(table),
                                    headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        return response.json()

    def _unix(self, name: str, command: str) -> str:
        """One command to HAProxy's master CLI or admin socket (unix sockets: reachable from
        this namespace)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.state_dir / name))
            conn.sendall(command.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            return conn.makefile("rb").read().decode()

    def admin(self, command: str) -> str:
        return self._unix("admin.sock", command)

    def workers(self) -> tuple[list[int], list[int]]:
        """(current workers, old workers of earlier configs still draining), from the master."""
        text = self._unix("master.sock", "show proc")

        def section(title: str) -> list[int]:
            part = text.split(f"# {title}\n")[1].split("#")[0] if f"# {title}\n" in text else ""
            return [int(line.split()[0]) for line in part.splitlines() if line.strip()]

        return section("workers"), section("old workers")

    def worker(self) -> int:
        [current], _ = self.workers()
        return current

    def old_workers(self) -> list[int]:
        return self.workers()[1]

    def servers(self) -> dict[str, list[str]]:
        """Pool backend -> its servers' names, as HAProxy's worker holds them now."""
        held: dict[str, list[str]] = {}
        for line in self.admin("show servers state").splitlines()[1:]:
            if line and not line.startswith("#"):
                fields = line.split()
                held.setdefault(fields[1], []).append(fields[3])
        return held

    def servers_of(self, replica: str) -> list[str]:
        return [name for names in self.servers().values() for name in names if name.startswith(replica + "-")]

    def pool_size(self) -> int:
        return sum(1 for line in self.admin("show backend").splitlines() if line.startswith("be_"))

    def haproxy_master(self) -> int | None:
        try:
            return int((self.state_dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None  # being written

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.control.close()


@pytest.fixture(scope="module")
def gateway_args() -> tuple[str, ...]:
    """Extra `gateway run` options; a module overrides this fixture for a gateway of its own kind."""
    return ()


@pytest.fixture(scope="module")
def gateway(gw_netns, certs, tmp_path_factory, gateway_args) -> Iterator[GatewayRun]:
    run = GatewayRun(gw_netns, tmp_path_factory.mktemp("gateway"), certs, *gateway_args)
    run.start()
    yield run
    run.close()


class Backends:
    """Replica stand-ins (tests/gateway/backend.py) in the namespace, and a window into each."""

    def __init__(self, ns: Netns):
        self.ns = ns

    def http(self, port: int, name: str) -> None:
        self.ns.spawn(sys.executable, str(REPO / "tests" / "gateway" / "backend.py"), "http", str(port), name,
                      ready_line="ready")

    def tcp(self, port: int, name: str) -> None:
        """A raw TCP echo: each connection first gets `name` and a newline."""
        self.ns.spawn(sys.executable, str(REPO / "tests" / "gateway" / "backend.py"), "tcp", str(port), name,
                      ready_line="ready")

    def ws(self, port: int) -> None:
        self.ns.spawn(sys.executable, str(REPO / "tests" / "gateway" / "backend.py"), "ws", str(port),
                      ready_line="ready")

    def seen(self, port: int) -> list[dict]:
        return httpx.get(f"http://{GATEWAY_IP}:{port}/_seen", timeout=10).json()

    def held(self, port: int) -> list[str]:
        return httpx.get(f"http://{GATEWAY_IP}:{port}/_held", timeout=10).json()

    def release(self, port: int, key: str) -> None:
        httpx.get(f"http://{GATEWAY_IP}:{port}/_release/{key}", timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def backends(gw_netns) -> Backends:
    return Backends(gw_netns)


def ssl_context(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


class Client:
    """HTTPS to the gateway for a host name under the test domain, with the right SNI and Host:
    the name itself resolves nowhere, the address is GATEWAY_IP."""

    def __init__(self, certs: Path):
        self.http = httpx.Client(verify=ssl_context(certs), timeout=20)

    def request(self, method: str, host: str, path: str = "/", *, headers: dict | None = None, **kwargs):
        return self.http.request(method, f"https://{GATEWAY_IP}:{HTTPS_PORT}{path}",
                                 headers={"Host": host, **(headers or {})}, extensions={"sni_hostname": host}, **kwargs)

    def get(self, host: str, path: str = "/", **kwargs) -> httpx.Response:
        return self.request("GET", host, path, **kwargs)

    def stream(self, method: str, host: str, path: str = "/", **kwargs):
        return self.http.stream(method, f"https://{GATEWAY_IP}:{HTTPS_PORT}{path}", headers={"Host": host},
                                extensions={"sni_hostname": host}, **kwargs)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def client(certs) -> Iterator[Client]:
    """Fresh per test: no test leans on a connection another test opened."""
    c = Client(certs)
    yield c
    c.close()


class KeepAlive:
    """HTTP/1.1 over one TLS connection, requests one after another, no retry and no reconnect:
    if the gateway ever closes the connection, the next request fails."""

    def __init__(self, certs, host: str):
        self.host = host
        raw = socket.create_connection((GATEWAY_IP, HTTPS_PORT), timeout=20)
        context = ssl_context(certs)
        context.set_alpn_protocols(["http/1.1"])
        self.conn = context.wrap_socket(raw, server_hostname=host)
        self.reader = self.conn.makefile("rb")

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        status_line = self.reader.readline()
        if not status_line:
            raise ConnectionError("the gateway closed the keep-alive connection")
        status = int(status_line.split()[1])
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "connection" and value.strip().lower() == "close":
                raise ConnectionError("the gateway announced it closes the connection")
        if length is None:
            raise ConnectionError(f"a {status} answer without Content-Length")
        return status, self.reader.read(length)

    def close(self) -> None:
        self.reader.close()
        self.conn.close()


def problem(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body = json.loads(response.text)
    assert body["status"] == response.status_code
    assert set(body) >= {"type", "title", "status", "detail"}
    return body


def wait_for(predicate, what: str, timeout: float = 20):
    """Polls `predicate` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)
