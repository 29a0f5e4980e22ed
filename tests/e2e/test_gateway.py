"""The gateway, end to end: a customer's deployment answers at its own HTTPS name through the
real gateway (HAProxy driven by `python -m gateway`), which the real plane configures from the
database, in front of real microVMs on a real agent.

The gateway listens on loopback ports of this namespace (like the plane); the replicas it
forwards to are in the node's namespace behind its veth pair (tests/e2e/conftest.py), so no
packet leaves namespaces the test made. The `hello` image's CGI programs (images/hello/hello.sh)
say which VM answered and what headers reached it, stream Server-Sent Events, and make a
replica's health check fail or pass on demand.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from tests.agent.netns import ip
from tests.e2e.conftest import REPO, Plane
from tests.e2e.stack import Procs, free_port, wait_for
from tests.e2e.test_deployments_run import Api

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

DOMAIN = "gantry.localhost"
TCP_PORTS = "31100-31119"  # the deployments' TCP ports at the gateway, on loopback: below the ephemeral range
STRANGER = "203.0.113.77"  # TEST-NET-3: a caller that is not the gateway


class Gateway:
    """`python -m gateway run` on loopback ports, with a CA of its own, registered with the plane."""

    def __init__(self, tmp, https_port: int):
        self.dir = tmp / "gateway"
        self.https_port, self.http_port, self.control_port = https_port, free_port(), free_port()
        made = subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(self.dir), "--domain", DOMAIN],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        self.token_file = self.dir / "control-token"
        self.token_file.write_text("e2e-gateway-token-" + os.urandom(8).hex())
        self.runner = Procs(tmp, {**os.environ, "PYTHONPATH": str(REPO)}, REPO)
        self.start()
        self.tls = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))

    def start(self) -> None:
        self.runner.spawn("gateway", [
            sys.executable, "-m", "gateway", "run", "--state-dir", str(self.dir / "run"),
            "--cert", str(self.dir / "gateway.pem"), "--token-file", str(self.token_file),
            "--https-bind", f"127.0.0.1:{self.https_port}", "--http-bind", f"127.0.0.1:{self.http_port}",
            "--public-https-port", str(self.https_port), "--control-bind", f"127.0.0.1:{self.control_port}",
            "--tcp-bind", "127.0.0.1", "--tcp-ports", TCP_PORTS])
        wait_for(lambda: _answers(f"http://127.0.0.1:{self.control_port}/healthz"), timeout=30,
                 what="the gateway's control API")

    def kill(self) -> None:
        proc = self.runner.procs["gateway"]
        os.killpg(proc.pid, signal.SIGKILL)  # HAProxy with it: it is in the gateway's session
        proc.wait(timeout=10)

    def register(self) -> None:
        from django.core.management import call_command

        call_command("gateway_register", "e2e", "--url", f"http://127.0.0.1:{self.control_port}",
                     "--token-file", str(self.token_file))

    def get(self, host: str, path: str = "/", **kwargs) -> httpx.Response:
        """A request to https://<host>:<port><path> as a customer's client makes it (SNI and Host
        are the name; the name resolves to loopback, as names under .localhost do)."""
        with httpx.Client(verify=self.tls, timeout=15) as http:
            return http.get(f"https://127.0.0.1:{self.https_port}{path}", headers={"Host": host, **kwargs.pop("headers", {})},
                            extensions={"sni_hostname": host}, **kwargs)

    def log(self) -> str:
        return self.runner.tail("gateway", 4000)

    def stop(self) -> None:
        self.runner.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def gateway_port():
    return free_port()


@pytest.fixture
def plane(catalog, tmp_path, local_registry, vmm_kit, gateway_port):  # noqa: F811  (overrides conftest's)
    plane = Plane(tmp_path, GANTRY_ENDPOINT_DOMAIN=DOMAIN, GANTRY_GATEWAY_HTTPS_PORT=str(gateway_port),
                  GANTRY_GATEWAY_PUSH_INTERVAL_S="2", GANTRY_GATEWAY_TCP_PORTS=TCP_PORTS,
                  GANTRY_GATEWAY_TCP_HOST="127.0.0.1")
    yield plane
    plane.stop()
    for name in plane.procs:
        print(f"--- {name}.log (tail)\n{plane.log(name)}")


@pytest.fixture
def gateway(plane, tmp_path, gateway_port):
    gateway = Gateway(tmp_path, gateway_port)
    gateway.register()
    yield gateway
    gateway.stop()
    print(f"--- gateway.log (tail)\n{gateway.log()}")


def whoami(gateway: Gateway, host: str, key: str) -> str:
    answer = gateway.get(host, "/cgi-bin/whoami", headers={"Gantry-Key": key})
    assert answer.status_code == 200, answer.text
    return answer.text


def tcp_echo(port: int, data: bytes) -> bytes:
    """What an echo server sends back through the gateway's TCP port; b"" when refused or reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got
    except OSError:
        return b""


def websocket_ticks(gateway: Gateway, host: str) -> list[tuple[float, str]]:
    """The frames the hello image's WebSocket server sends (three, a second apart) as they
    arrive through the gateway, over TLS with the name as SNI and Host."""
    from websockets.sync.client import connect

    arrivals = []
    sock = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=15)
    with connect(f"wss://{host}:{gateway.https_port}/", sock=sock, ssl=gateway.tls, server_hostname=host,
                 open_timeout=15) as ws:
        for message in ws:
            arrivals.append((time.monotonic(), message))
    return arrivals


def vm_of(text: str) -> str:
    return text.splitlines()[0].removeprefix("host ")


def test_a_private_https_endpoint_balances_streams_leaves_out_the_sick_and_heals(plane, gateway, make_node, customer):
    from nodes.models import Node

    # The node's published ports answer only the gateway, which reaches them from the host's end
    # of the node's veth pair.
    node = make_node("local-cpu-1", gateway_only=True)
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    api = Api(plane, customer)
    deployment_id = api.deploy(replica_count=2)
    api.wait_status(deployment_id, "running")
    (endpoint,) = wait_for(lambda: (eps := api.get(deployment_id)["endpoints"]) and eps[0]["ready"] and eps,
                           timeout=60, what="the endpoint to be ready")
    label = api.get(deployment_id)["endpoint_label"]
    host = f"{label}.{DOMAIN}"
    assert endpoint["url"] == f"https://{host}:{gateway.https_port}"
    assert (endpoint["type"], endpoint["access"], endpoint["internal_port"]) == ("https", "private", 8080)

    # Plain HTTP is sent to HTTPS.
    redirect = httpx.get(f"http://127.0.0.1:{gateway.http_port}/x?y=1", headers={"Host": host}, timeout=10)
    assert redirect.status_code == 308, redirect.text
    assert redirect.headers["location"] == f"https://{host}:{gateway.https_port}/x?y=1"

    # Private by default: no key, no answer, and the workload never sees the attempt.
    refused = gateway.get(host)
    assert refused.status_code == 401 and refused.headers["content-type"].startswith("application/problem+json")
    made = api.http.post(f"/deployments/{deployment_id}/endpoint-keys", json={"name": "e2e"})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["secret"], made.json()["key"]["id"]
    answer = wait_for(lambda: (r := gateway.get(host, headers={"Gantry-Key": key})).status_code == 200 and r,
                      timeout=30, what="the new key to be accepted")
    assert "Hello from Gantry" in answer.text
    seen = whoami(gateway, host, key)
    assert "HTTP_GANTRY_KEY" not in seen  # the gateway strips the key
    assert "HTTP_X_FORWARDED_PROTO=https" in seen and f"HTTP_X_FORWARDED_HOST={host}" in seen
    assert "HTTP_X_FORWARDED_FOR=127.0.0.1" in seen
    assert gateway.get(host, headers={"Gantry-Key": key + "x"}).status_code == 401

    # The direct node port cannot be used to bypass the key: a caller that is not the gateway is
    # refused at once (a reset, not a hang). The stranger is another address of this host, routed
    # from the node's namespace back over the same pair.
    direct = [r["endpoint"] for r in api.replicas(deployment_id, live="true")][0]
    ip("addr", "add", f"{STRANGER}/32", "dev", node.host_if)
    ip("-n", node.netns.name, "route", "add", f"{STRANGER}/32", "via", node.host_address)
    node_addr, node_port = direct.removeprefix("http://").rsplit(":", 1)
    began = time.monotonic()
    with pytest.raises(ConnectionRefusedError):  # a timeout would mean dropped, not refused
        socket.create_connection((node_addr, int(node_port)), timeout=10, source_address=(STRANGER, 0)).close()
    assert time.monotonic() - began < 5
    assert httpx.get(direct, timeout=10).status_code == 200  # from the gateway's address: served

    # Both replicas serve.
    vms = {vm_of(whoami(gateway, host, key)) for _ in range(50)}
    assert len(vms) == 2, vms

    # A Server-Sent Events stream arrives event by event, not at its end.
    arrivals = []
    with httpx.Client(verify=gateway.tls, timeout=15) as http, http.stream(
            "GET", f"https://127.0.0.1:{gateway.https_port}/cgi-bin/stream",
            headers={"Host": host, "Gantry-Key": key}, extensions={"sni_hostname": host}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] > 1.5, arrivals

    # A replica whose health check fails leaves the pool; when it passes again it comes back.
    sick = vm_of(gateway.get(host, "/cgi-bin/sick", headers={"Gantry-Key": key}).text.replace("sick ", "host ", 1))
    wait_for(lambda: all(vm_of(whoami(gateway, host, key)) != sick for _ in range(20)), timeout=90,
             what=f"{sick} to leave the pool")
    (replica,) = [r for r in api.replicas(deployment_id) if r["id"] == sick]  # a VM's hostname is its replica's id
    direct = httpx.get(f"{replica['endpoint']}/cgi-bin/well", timeout=10)  # from the host: the gateway's address
    assert direct.status_code == 200, direct.text
    wait_for(lambda: len({vm_of(whoami(gateway, host, key)) for _ in range(20)}) == 2, timeout=90,
             what=f"{sick} to come back")

    # A killed gateway started again serves the same routes within seconds: the plane re-pushes.
    gateway.kill()
    gateway.start()
    wait_for(lambda: gateway.get(host, headers={"Gantry-Key": key}).status_code == 200, timeout=20,
             what="the restarted gateway to serve the route again")

    # A revoked key stops working within seconds.
    assert api.http.delete(f"/deployments/{deployment_id}/endpoint-keys/{key_id}").status_code == 204
    wait_for(lambda: gateway.get(host, headers={"Gantry-Key": key}).status_code == 401, timeout=15,
             what="the revoked key to be refused")

    # Public access needs no key; a stopped deployment answers 503 saying so, never a hang.
    assert api.http.patch(f"/deployments/{deployment_id}", json={"endpoint_access": "public"}).status_code == 200
    wait_for(lambda: gateway.get(host).status_code == 200, timeout=15, what="public access")
    assert api.http.post(f"/deployments/{deployment_id}/stop").status_code == 200
    api.wait_status(deployment_id, "stopped", timeout=120)
    gone = wait_for(lambda: (r := gateway.get(host)).status_code == 503 and r, timeout=30, what="503 once stopped")
    assert gone.headers["retry-after"] and "stopped" in gone.json()["detail"]


def test_a_rolling_restart_under_a_steady_request_loop_loses_no_request(plane, gateway, make_node, customer):
    import threading

    from nodes.models import Node

    node = make_node("local-cpu-1")
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    api = Api(plane, customer)
    deployment_id = api.deploy(replica_count=2, endpoint_access="public", stop_grace_seconds=3,
                               env={"ECHO_PORT": "7000", "WS_PORT": "7001"},
                               expose=[{"name": "echo", "port": 7000, "protocol": "tcp"},
                                       {"name": "ws", "port": 7001, "protocol": "http"}])
    api.wait_status(deployment_id, "running")
    # Its TCP port: a raw TCP echo through the gateway's port for it.
    (tcp,) = wait_for(lambda: [e for e in api.get(deployment_id)["endpoints"] if e["type"] == "tcp" and e["ready"]],
                      timeout=60, what="the TCP endpoint to be ready")
    assert tcp["url"] == f"tcp://127.0.0.1:{tcp['port']}" and tcp["access"] == "public"
    assert wait_for(lambda: tcp_echo(tcp["port"], b"ping through the gateway\n"), timeout=30,
                    what="the echo through the gateway") == b"ping through the gateway\n"
    host = f"{api.get(deployment_id)['endpoint_label']}.{DOMAIN}"
    # A WebSocket on its own HTTP port's name: upgraded through the gateway, frames as they come.
    ws_host = f"{api.get(deployment_id)['endpoint_label']}-ws.{DOMAIN}"
    assert {"type": "https", "url": f"https://{ws_host}:{gateway.https_port}", "internal_port": 7001,
            "name": "ws"}.items() <= \
        next(e for e in api.get(deployment_id)["endpoints"] if e.get("name") == "ws").items()
    ticks = wait_for(lambda: websocket_ticks(gateway, ws_host), timeout=30, what="a WebSocket through the gateway")
    assert [m.split()[:2] for _, m in ticks] == [["tick", "1"], ["tick", "2"], ["tick", "3"]], ticks
    assert ticks[-1][0] - ticks[0][0] > 1.5, ticks  # unbuffered: not all at the close
    wait_for(lambda: len({vm_of(gateway.get(host, "/cgi-bin/whoami").text) for _ in range(10)}) == 2, timeout=60,
             what="both replicas in the pool")
    before = {r["id"] for r in api.replicas(deployment_id, state="running")}

    # One client, one keep-alive connection when it can, no retries: what a customer's loop does.
    answers: list[tuple[int | str, str]] = []
    done = threading.Event()

    def loop():
        with httpx.Client(verify=gateway.tls, timeout=30) as http:
            while not done.is_set():
                try:
                    r = http.get(f"https://127.0.0.1:{gateway.https_port}/cgi-bin/whoami", headers={"Host": host},
                                 extensions={"sni_hostname": host})
                    answers.append((r.status_code, vm_of(r.text) if r.status_code == 200 else r.text[:200]))
                except httpx.HTTPError as exc:
                    answers.append((type(exc).__name__, str(exc)[:200]))

    looping = threading.Thread(target=loop, daemon=True)
    looping.start()
    try:
        wait_for(lambda: len(answers) >= 5, timeout=30, what="the loop to be answered")
        assert api.http.post(f"/deployments/{deployment_id}/restart").status_code == 200
        wait_for(lambda: (running := [r for r in api.replicas(deployment_id) if r["state"] == "running"])
                 and len(running) == 2 and not {r["id"] for r in running} & before
                 and api.get(deployment_id)["status"] == "running", timeout=300,
                 what="both replicas replaced and the deployment running again")
        after = {r["id"] for r in api.replicas(deployment_id, state="running")}
        wait_for(lambda: after <= {vm for _, vm in answers[-40:]} and {vm for _, vm in answers[-10:]} <= after,
                 timeout=60, what="only the new replicas answering, both of them")
    finally:
        done.set()
        looping.join(timeout=60)
    assert tcp_echo(tcp["port"], b"and after the roll\n") == b"and after the roll\n"  # the new replicas echo
    failed = [a for a in answers if a[0] != 200]
    assert not failed, (len(answers), failed[:5])
    served = {vm for _, vm in answers}
    assert before <= served and after <= served, (before, after, served)  # old ones until they left, then new ones

