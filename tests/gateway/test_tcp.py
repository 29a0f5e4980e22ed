"""TCP routes: a gateway run with --tcp-bind/--tcp-ports serves each route's listen port from one
`mode tcp` frontend on the whole range, balances its connections, drains a removed backend's
connections up to the stop grace, closes a port with no route at once, and takes every change
through the runtime API: no reload, HTTP traffic untouched."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter

import pytest

from tests.gateway.conftest import GATEWAY_IP, KeepAlive, wait_for
from tests.gateway.tables import backend, push_body, route, table, tcp_route

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
LOW, HIGH = 20000, 20999  # the plane's default GANTRY_GATEWAY_TCP_PORTS: a thousand ports bound
ECHO = {"a": 18081, "b": 18082, "c": 18083}
REPLICA = {name: f"00000000-0000-4000-8000-0000000008{n:02d}" for n, name in enumerate(ECHO)}
WEB_PORT = 18089
GRACE = 5
WEB = route("web", backend(GATEWAY_IP, WEB_PORT, "00000000-0000-4000-8000-000000000899"))


@pytest.fixture(scope="module")
def gateway_args() -> tuple[str, ...]:
    return ("--tcp-bind", GATEWAY_IP, "--tcp-ports", f"{LOW}-{HIGH}")


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    for name, port in ECHO.items():
        backends.tcp(port, name)
    backends.http(WEB_PORT, "web")


def of(*names: str) -> list[dict]:
    return [backend(GATEWAY_IP, ECHO[name], REPLICA[name]) for name in names]


class Tcp:
    """A raw TCP connection through the gateway: `backend` is the name the echo greeted it with."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((GATEWAY_IP, port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self.backend = self.reader.readline().decode().strip()

    def echo(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reader.read(len(data))

    def ended(self) -> bool:
        """Whether the gateway closed it (nothing more comes); False while it stays open."""
        self.sock.settimeout(0.2)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def refused_at_once(port: int) -> bool:
    """The connection is refused, or closed before a byte comes, well within a second."""
    started = time.monotonic()
    try:
        conn = socket.create_connection((GATEWAY_IP, port), timeout=5)
    except ConnectionError:
        return time.monotonic() - started < 1
    with conn:
        try:
            data = conn.recv(1)
        except ConnectionError:
            data = b""
        except TimeoutError:
            return False
    return data == b"" and time.monotonic() - started < 1


def test_an_echo_backend_answers_through_its_listen_port(gateway):
    answer = gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a"))]))
    assert answer["tcp_routes"] == {"count": 1, "served": True}
    conn = Tcp(20001)
    try:
        assert conn.backend == "a"
        assert conn.echo(b"hello\n") == b"hello\n"
        assert conn.echo(b"\x00\xff" * 40000) == b"\x00\xff" * 40000  # bytes as they are, however many
    finally:
        conn.close()
    assert gateway.control.get("/v1/routes").json()["tcp_routes"] == {"count": 1, "served": True}


def test_connections_are_balanced_over_two_backends(gateway):
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a", "b"))]))
    conns = [Tcp(20001) for _ in range(4)]  # held open together: leastconn gives each backend two
    try:
        assert Counter(conn.backend for conn in conns) == Counter({"a": 2, "b": 2})
        assert all(conn.echo(b"x") == b"x" for conn in conns)
    finally:
        for conn in conns:
            conn.close()


def test_a_removed_backend_keeps_its_connection_until_the_stop_grace_and_new_ones_go_to_the_other(gateway):
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a", "b"), stop_grace_seconds=GRACE)]))
    worker = gateway.worker()
    old = Tcp(20001)
    keeper = "b" if old.backend == "a" else "a"
    try:
        gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of(keeper), stop_grace_seconds=GRACE)]))
        removed_at = time.monotonic()
        fresh = [Tcp(20001) for _ in range(6)]
        assert {conn.backend for conn in fresh} == {keeper}
        for conn in fresh:
            conn.close()
        assert old.echo(b"still there") == b"still there"  # draining, not cut
        assert len(gateway.servers_of(REPLICA[old.backend])) == 1
        time.sleep(1.5)
        assert old.echo(b"and still") == b"and still"
        wait_for(old.ended, "the draining connection was closed at the end of the stop grace", timeout=10)
        assert time.monotonic() - removed_at >= GRACE
        wait_for(lambda: gateway.servers_of(REPLICA[old.backend]) == [], "the drained server was deleted")
    finally:
        old.close()
    assert gateway.workers() == ([worker], [])


def test_a_connection_that_ends_within_the_grace_lets_its_server_go_at_once(gateway):
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a"), stop_grace_seconds=60)]))
    conn = Tcp(20001)
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("b"), stop_grace_seconds=60)]))
    assert conn.echo(b"draining") == b"draining"
    conn.close()
    wait_for(lambda: gateway.servers_of(REPLICA["a"]) == [], "the server deleted once its connection ended", timeout=10)


def test_a_port_with_no_route_or_no_backend_is_closed_at_once_and_one_outside_the_range_refused(gateway):
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a")), tcp_route("idle-db", 20002)]))
    assert refused_at_once(20002)  # a route with no backend
    assert refused_at_once(20003)  # no route
    assert refused_at_once(LOW) and refused_at_once(HIGH)
    assert refused_at_once(HIGH + 1)  # nothing listens there
    conn = Tcp(20001)
    assert conn.backend == "a"
    conn.close()


def test_a_listen_port_outside_the_gateways_range_is_refused_and_nothing_applied(gateway):
    served = gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a"))]))
    bad = table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a")), tcp_route("far", 21000, *of("b"))])
    response = gateway.control.put("/v1/routes", content=push_body(bad))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "table.tcp_routes.1.listen_port"
    assert "20000-20999" in response.json()["detail"]
    assert gateway.control.get("/v1/routes").json()["digest"] == served["digest"]


def test_pushes_changing_tcp_routes_neither_reload_nor_disturb_http_or_an_unchanged_tcp_route(gateway, certs):
    steady = tcp_route("steady-ssh", 20010, *of("c"), stop_grace_seconds=1)
    changes = [
        [tcp_route("echo-raw", 20001, *of("a"))],
        [tcp_route("echo-raw", 20001, *of("a", "b"))],
        [tcp_route("echo-raw", 20001, *of("b")), tcp_route("more-x", 20002, *of("a"))],
        [tcp_route("more-x", 20002, *of("a", "b"))],
        [tcp_route("echo-raw", 20005, *of("a")), tcp_route("idle-db", 20006)],
        [tcp_route("idle-db", 20006, *of("b"))],
        [],
        [tcp_route("echo-raw", 20001, *of("b"), stop_grace_seconds=0)],
    ] * 2
    gateway.push(table(WEB, tcp=[steady]))
    worker = gateway.worker()
    held = Tcp(20010)
    answers: list[int] = []
    failures: list[str] = []
    done = threading.Event()
    client = KeepAlive(certs, "web.gantry.localhost")

    def loop():
        try:
            while not done.is_set():
                status, _ = client.get(f"/web/{len(answers)}")
                answers.append(status)
        except Exception as exc:  # reported by the assertion below
            failures.append(f"after {len(answers)} requests: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        for n, tcp in enumerate(changes):
            mark = len(answers)
            wait_for(lambda: len(answers) >= mark + 10 or failures, "HTTP requests between pushes")
            gateway.push(table(WEB, tcp=[steady, *tcp]))
            assert held.echo(f"push {n}\n".encode()) == f"push {n}\n".encode()
            for listen in {r["listen_port"] for r in tcp if r["backends"]}:
                conn = Tcp(listen)
                conn.close()
    finally:
        done.set()
        thread.join(60)
        client.close()
        held.close()
    assert failures == []
    assert len(answers) >= 10 * len(changes) and set(answers) == {200}
    assert gateway.workers() == ([worker], [])
    assert not gateway.said("loading a new config")
    # what left the table drained and was deleted: only the last table's servers are left
    wait_for(lambda: sorted(name.rsplit("-", 1)[0] for proxy, names in gateway.servers().items()
                            if proxy.startswith("tcp_") for name in names) == sorted([REPLICA["c"], REPLICA["b"]]),
             "only the last table's TCP servers are left")


def test_a_reload_hands_the_whole_range_over_and_an_open_connection_stays_with_the_old_worker(gateway):
    gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a"))]))
    worker = gateway.worker()
    old = Tcp(20001)
    try:
        # a TCP route's timeout over the config's 600 s: a new config, loaded by a reload
        gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a")),
                                     tcp_route("slow-db", 20999, *of("b"), timeout_s=1000)]))
        assert gateway.worker() != worker and gateway.said("client timeout over 600s")
        assert gateway.old_workers() == [worker]  # still holding the open connection
        for port, name in ((20999, "b"), (20001, "a")):
            conn = Tcp(port)
            conn.close()
            assert conn.backend == name
        assert refused_at_once(20500)
        assert old.echo(b"across the reload") == b"across the reload"
    finally:
        old.close()
    wait_for(lambda: gateway.old_workers() == [], "the old worker left once its connection ended")


def test_a_restarted_gateway_serves_its_tcp_routes_at_once_from_the_table_it_kept(gateway):
    served = gateway.push(table(WEB, tcp=[tcp_route("echo-raw", 20001, *of("a"))]))
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0
    assert refused_at_once(20001)  # the listeners went with it
    gateway.start()
    conn = Tcp(20001)
    try:
        assert conn.backend == "a" and conn.echo(b"back") == b"back"
    finally:
        conn.close()
    assert gateway.control.get("/v1/routes").json()["digest"] == served["digest"]
