"""The pushes that do reload HAProxy: a pool too small for the routes (it doubles), a route timeout
over the config's client timeout, and the fallback when a runtime command fails. Each loads a
config with the whole table in it and still serves every route; one HAProxy refuses leaves the
previous table served."""

from __future__ import annotations

import pytest

from gateway.pool import pool_size
from tests.gateway.conftest import GATEWAY_IP, Client, problem, wait_for
from tests.gateway.tables import backend, push_body, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
A, B = 18071, 18072
REPLICA_A, REPLICA_B = "00000000-0000-4000-8000-0000000007a0", "00000000-0000-4000-8000-0000000007b0"


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    backends.http(A, "a")
    backends.http(B, "b")


def many(count: int, **extra) -> dict:
    return table(*(route(f"r{n}", backend(GATEWAY_IP, A if n % 2 else B), **extra) for n in range(count)))


def answers(certs, host: str, path: str = "/", times: int = 1) -> list[tuple[int, str]]:
    c = Client(certs)
    try:
        found = []
        for _ in range(times):
            response = c.get(host, path)
            found.append((response.status_code, response.json().get("backend") if response.status_code == 200 else ""))
        return found
    finally:
        c.close()


def test_more_routes_than_the_pool_holds_grow_it_by_a_reload_and_all_of_them_serve(gateway, certs):
    gateway.push(many(40))
    worker = gateway.worker()
    assert gateway.pool_size() == 64
    gateway.push(many(64))  # 24 more: still room, no reload
    assert gateway.worker() == worker
    gateway.push(many(70))
    assert gateway.worker() != worker
    assert gateway.pool_size() == pool_size(70, at_least=128) == 256
    assert gateway.said("6 new routes, 0 free backends of 64: loading a new config into HAProxy, a pool of 256")
    for n in range(70):
        assert answers(certs, f"r{n}.gantry.localhost") == [(200, "a" if n % 2 else "b")]
    # The new worker holds the servers from its start (in its config), and takes runtime changes
    # again: those of the routes that leave drain and are deleted like any other.
    worker = gateway.worker()
    assert sum(len(names) for names in gateway.servers().values()) == 70
    gateway.push(many(3))
    assert answers(certs, "r69.gantry.localhost")[0][0] == 404
    wait_for(lambda: sum(len(names) for names in gateway.servers().values()) == 3, "the 67 servers left were deleted")
    assert gateway.worker() == worker


def test_a_route_timeout_over_the_client_timeout_reloads_with_one_that_covers_it(gateway, certs):
    gateway.push(table(route("slow", backend(GATEWAY_IP, A), timeout_s=600)))
    worker = gateway.worker()
    gateway.push(table(route("slow", backend(GATEWAY_IP, A), timeout_s=3600)))
    assert gateway.worker() != worker
    config = (gateway.state_dir / "haproxy.cfg").read_text()
    assert "    timeout client 4800s\n" in config and "    hard-stop-after 4800s\n" in config
    assert answers(certs, "slow.gantry.localhost") == [(200, "a")]
    worker = gateway.worker()
    gateway.push(table(route("slow", backend(GATEWAY_IP, A), timeout_s=60)))  # lower: at runtime
    assert gateway.worker() == worker


def test_a_failed_runtime_command_falls_back_to_a_rebuild_that_serves_the_table(gateway, certs):
    gateway.push(table(route("fb", backend(GATEWAY_IP, A, REPLICA_A), backend(GATEWAY_IP, B, REPLICA_B))))
    worker = gateway.worker()
    # Someone deletes a server behind the gateway's back: draining it, as the next push asks, fails.
    [name] = gateway.servers_of(REPLICA_B)
    [pool_backend] = [be for be, names in gateway.servers().items() if name in names]
    assert gateway.admin(f"set server {pool_backend}/{name} state maint\ndel server {pool_backend}/{name}").strip() \
        .endswith("Server deleted.")
    served = gateway.push(table(route("fb", backend(GATEWAY_IP, A, REPLICA_A))))
    assert gateway.control.get("/v1/routes").json() == served
    assert gateway.worker() != worker
    assert gateway.said("a runtime command failed")
    assert gateway.said("No such server")
    assert answers(certs, "fb.gantry.localhost", times=10) == [(200, "a")] * 10
    assert gateway.servers_of(REPLICA_B) == [] and len(gateway.servers_of(REPLICA_A)) == 1
    worker = gateway.worker()
    gateway.push(table(route("fb", backend(GATEWAY_IP, A, REPLICA_A), backend(GATEWAY_IP, B, REPLICA_B))))
    assert gateway.worker() == worker  # back to runtime changes
    assert {backend for _, backend in answers(certs, "fb.gantry.localhost", times=20)} == {"a", "b"}


def test_a_config_haproxy_refuses_is_503_and_the_previous_table_stays_served(gateway, certs):
    """A validated table always renders a config HAProxy takes; what can still fail is the
    operator's side, such as a certificate file replaced by something that is not one. It shows
    only when a push needs a reload: the runtime API never reads the certificate."""
    served = gateway.push(table(route("kept", backend(GATEWAY_IP, A), timeout_s=60)))
    worker = gateway.worker()
    pem = certs / "gateway.pem"
    good = pem.read_bytes()
    pem.write_bytes(b"not a certificate\n")
    try:
        needs_reload = table(route("kept", backend(GATEWAY_IP, A), timeout_s=86400))
        response = gateway.control.put("/v1/routes", content=push_body(needs_reload))
        assert response.status_code == 503
        assert "haproxy -c refused the config" in problem(response)["detail"]
        assert gateway.control.get("/v1/routes").json() == served
        assert gateway.worker() == worker
        assert answers(certs, "kept.gantry.localhost") == [(200, "a")]
        runtime_only = gateway.push(table(route("kept", backend(GATEWAY_IP, B), timeout_s=60)))
        assert runtime_only["digest"] != served["digest"]
        wait_for(lambda: answers(certs, "kept.gantry.localhost") == [(200, "b")], "the runtime push is served")
    finally:
        pem.write_bytes(good)
