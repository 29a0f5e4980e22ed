"""A killed gateway takes its HAProxy with it, and a restarted one serves the last table it had
(kept on disk) at once, before the plane pushes again; a HAProxy that dies is started again by
the gateway with the same table; SIGTERM stops both cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.agent.netns import ip
from tests.gateway.conftest import GATEWAY_IP, Client, problem, wait_for
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
PORT = 18041
HOST = "kept.gantry.localhost"
ROUTES = table(route("kept", backend(GATEWAY_IP, PORT)))


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    backends.http(PORT, "kept")


def serves(certs) -> int | None:
    """The status the gateway answers for the route now, None when nothing serves: nothing
    listens, or a worker whose master was killed accepts and closes as it goes."""
    c = Client(certs)
    try:
        return c.get(HOST, "/", timeout=5).status_code
    except httpx.TransportError:
        return None
    finally:
        c.close()


def haproxy_pids(gateway) -> list[int]:
    """HAProxy processes in the test's namespace (pgrep would see every namespace's)."""
    pids = []
    for pid in ip("netns", "pids", gateway.ns.name, check=False).stdout.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                pids.append(int(pid))
        except OSError:
            pass  # gone meanwhile
    return pids


def test_a_gateway_killed_outright_takes_haproxy_with_it_and_restarted_serves_the_last_table(gateway, certs):
    served = gateway.push(ROUTES)
    assert serves(certs) == 200
    gateway.signal(signal.SIGKILL)
    gateway.wait()
    wait_for(lambda: haproxy_pids(gateway) == [], "HAProxy died with its gateway")
    assert serves(certs) is None
    gateway.start()
    assert serves(certs) == 200  # before any push
    assert gateway.control.get("/v1/routes").json()["digest"] == served["digest"]
    assert (gateway.state_dir / "table.json").stat().st_mode & 0o777 == 0o600


def test_a_killed_haproxy_is_started_again_by_the_gateway_with_the_same_table(gateway, certs):
    gateway.push(ROUTES)
    master = gateway.haproxy_master()
    os.kill(master, signal.SIGKILL)
    wait_for(lambda: gateway.said("HAProxy exited with status -9; starting it again"), "the gateway noticed")
    wait_for(lambda: serves(certs) == 200, "the routes are served again")
    assert gateway.process.poll() is None
    assert gateway.haproxy_master() != master
    gateway.push(table(route("kept", backend(GATEWAY_IP, PORT)), route("more", backend(GATEWAY_IP, PORT))))
    c = Client(certs)
    try:
        assert c.get("more.gantry.localhost").status_code == 200
    finally:
        c.close()


def test_a_haproxy_that_keeps_dying_ends_the_gateway(gateway, certs):
    gateway.signal(signal.SIGTERM)  # a fresh gateway: no restart counted yet
    assert gateway.wait() == 0
    gateway.start()
    for kill in range(4):
        master = gateway.haproxy_master()
        os.kill(master, signal.SIGKILL)
        if kill < 3:
            wait_for(lambda: serves(certs) == 200 and gateway.haproxy_master() != master, "HAProxy started again")
    assert gateway.wait() == 1
    assert gateway.said("times within a minute; giving up")
    wait_for(lambda: haproxy_pids(gateway) == [], "no HAProxy left")
    gateway.start()
    assert serves(certs) == 200


def test_sigterm_stops_the_gateway_and_haproxy_cleanly(gateway, certs):
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0
    assert haproxy_pids(gateway) == []
    assert serves(certs) is None
    gateway.start()
    assert serves(certs) == 200


def test_a_table_file_that_is_not_a_table_starts_with_none(gateway, certs):
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0
    (gateway.state_dir / "table.json").write_bytes(b'{"version": 1, "digest": "00", "table": {}}')
    gateway.start()
    assert gateway.said("is not a table (digest: must be 64 lowercase hex digits); starting with no table")
    c = Client(certs)
    try:
        assert problem(c.get(HOST))["status"] == 404
    finally:
        c.close()
    assert gateway.control.get("/v1/routes").json() == {"digest": None, "applied_at": None,
                                                        "tcp_routes": {"count": 0, "served": False}}
