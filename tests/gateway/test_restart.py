"""A killed gateway (or its HAProxy) takes its proxy with it; restarted, it serves nothing until the
plane pushes again (here the test pushes), then the same routes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.agent.netns import ip
from tests.gateway.conftest import GATEWAY_IP, Client, problem, wait_for
from tests.gateway.tables import backend, push_body, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
PORT = 18041
HOST = "kept.gantry.localhost"
ROUTES = table(route("kept", backend(GATEWAY_IP, PORT)))


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    backends.http(PORT, "kept")


def serves(certs) -> int | None:
    """The status the gateway answers for the route now, None when nothing listens."""
    c = Client(certs)
    try:
        return c.get(HOST, "/", timeout=5).status_code
    except httpx.ConnectError:
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


def assert_restart_heals(gateway, certs) -> None:
    gateway.start()
    assert serves(certs) == 404  # an empty table until the plane pushes
    assert gateway.control.get("/v1/routes").json() == {"digest": None, "applied_at": None}
    gateway.push(ROUTES)
    assert serves(certs) == 200


def test_a_gateway_killed_outright_takes_haproxy_with_it_and_heals_on_the_next_push(gateway, certs):
    gateway.push(ROUTES)
    assert serves(certs) == 200
    gateway.signal(signal.SIGKILL)
    gateway.wait()
    wait_for(lambda: haproxy_pids(gateway) == [], "HAProxy died with its gateway")
    assert serves(certs) is None
    assert_restart_heals(gateway, certs)


def test_a_killed_haproxy_ends_the_gateway_which_restarted_heals_on_the_next_push(gateway, certs):
    os.kill(gateway.haproxy_master(), signal.SIGKILL)
    assert gateway.wait() == 1
    assert "HAProxy exited" in gateway.output()
    wait_for(lambda: haproxy_pids(gateway) == [], "the workers died with their master")
    assert_restart_heals(gateway, certs)


def test_sigterm_stops_the_gateway_and_haproxy_cleanly(gateway, certs):
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0
    assert haproxy_pids(gateway) == []
    assert serves(certs) is None
    gateway.start()
    c = Client(certs)
    try:
        assert problem(c.get(HOST))["status"] == 404
    finally:
        c.close()


def test_a_table_haproxy_refuses_is_503_and_the_previous_one_stays_served(gateway, certs):
    """A validated table always renders a config HAProxy takes; what can still fail is the
    operator's side, such as a certificate file replaced by something that is not one."""
    served = gateway.push(ROUTES)
    assert serves(certs) == 200
    pem = certs / "gateway.pem"
    good = pem.read_bytes()
    pem.write_bytes(b"not a certificate\n")
    try:
        response = gateway.control.put("/v1/routes", content=push_body(table(route("new", backend(GATEWAY_IP, PORT)))))
        assert response.status_code == 503
        assert "haproxy -c refused the config" in problem(response)["detail"]
    finally:
        pem.write_bytes(good)
    assert gateway.control.get("/v1/routes").json() == served
    assert serves(certs) == 200
