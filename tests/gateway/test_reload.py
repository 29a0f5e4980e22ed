"""A new table is a graceful reload: what is in flight on a removed backend finishes, new requests
go to the backends of the new table only."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from tests.gateway.conftest import GATEWAY_IP, Client, wait_for
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
A, B = 18031, 18032
HOST = "roll.gantry.localhost"
REPLICA_A, REPLICA_B = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    backends.http(A, "a")
    backends.http(B, "b")


def both() -> dict:
    return table(route("roll", backend(GATEWAY_IP, A, REPLICA_A), backend(GATEWAY_IP, B, REPLICA_B),
                       stop_grace_seconds=60))


def only(port: int, replica: str) -> dict:
    return table(route("roll", backend(GATEWAY_IP, port, replica), stop_grace_seconds=60))


def test_a_removed_backend_finishes_its_in_flight_request_while_new_ones_go_to_the_other(gateway, certs, backends):
    gateway.push(both())
    outcome: dict = {}

    def slow_request():
        slow = Client(certs)
        try:
            response = slow.get(HOST, "/hold/inflight", timeout=60)
            outcome["status"], outcome["backend"] = response.status_code, response.json()["backend"]
        except Exception as exc:  # reported by the assertion below, with what it was
            outcome["error"] = repr(exc)
        finally:
            slow.close()

    thread = threading.Thread(target=slow_request)
    thread.start()
    holder = wait_for(lambda: next((p for p in (A, B) if "inflight" in backends.held(p)), None),
                      "the slow request reached a backend")
    keeper = B if holder == A else A
    gateway.push(only(keeper, REPLICA_B if keeper == B else REPLICA_A))

    fresh = Client(certs)
    try:
        answered = Counter(fresh.get(HOST, "/after-push").json()["backend"] for _ in range(20))
    finally:
        fresh.close()
    assert answered == Counter({"b" if keeper == B else "a": 20})
    assert thread.is_alive()  # still in flight on the old worker and the removed backend

    assert gateway.old_workers()  # the old worker drains
    backends.release(holder, "inflight")
    thread.join(30)
    assert outcome == {"status": 200, "backend": "a" if holder == A else "b"}
    wait_for(lambda: gateway.old_workers() == [], "the old worker exited once its request was done")


def test_a_request_longer_than_the_stop_grace_is_cut_and_the_old_worker_exits(gateway, certs, backends):
    """hard-stop-after is the largest stop grace: an old worker never lingers past it."""
    gateway.push(table(route("roll", backend(GATEWAY_IP, A, REPLICA_A), stop_grace_seconds=1)))
    outcome: dict = {}

    def slow_request():
        slow = Client(certs)
        try:
            outcome["status"] = slow.get(HOST, "/hold/too-long", timeout=60).status_code
        except Exception as exc:
            outcome["error"] = type(exc).__name__
        finally:
            slow.close()

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: "too-long" in backends.held(A), "the slow request reached the backend")
    gateway.push(only(B, REPLICA_B))
    wait_for(lambda: gateway.old_workers() == [], "the old worker was stopped after its grace", timeout=15)
    thread.join(15)
    # Cut, not answered: HAProxy answers 502 on the streams it kills, or the connection just ends.
    assert outcome in ({"status": 502}, {"error": "RemoteProtocolError"}), outcome
    backends.release(A, "too-long")


def test_a_push_that_adds_a_backend_serves_it_at_once(gateway, client):
    # `client` connects on its first request, after both pushes: to the newest worker.
    gateway.push(only(A, REPLICA_A))
    gateway.push(both())
    answered = Counter(client.get(HOST, "/added").json()["backend"] for _ in range(20))
    assert set(answered) == {"a", "b"}
