"""A backend leaving the table drains, through the runtime API and with no reload: what it has in
flight finishes (up to its route's stop grace), new requests go to the others at once, and once it
is idle HAProxy's worker no longer holds it."""

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
REPLICA = {A: REPLICA_A, B: REPLICA_B}
NAME = {A: "a", B: "b"}


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    backends.http(A, "a")
    backends.http(B, "b")


def both(grace: int = 60) -> dict:
    return table(route("roll", backend(GATEWAY_IP, A, REPLICA_A), backend(GATEWAY_IP, B, REPLICA_B),
                       stop_grace_seconds=grace))


def only(port: int, grace: int = 60) -> dict:
    return table(route("roll", backend(GATEWAY_IP, port, REPLICA[port]), stop_grace_seconds=grace))


def in_flight(certs, path: str, outcome: dict) -> threading.Thread:
    """A request on its own connection, in a thread; `outcome` gets its status and backend, or its error."""

    def request():
        slow = Client(certs)
        try:
            response = slow.get(HOST, path, timeout=60)
            outcome["status"] = response.status_code
            if response.status_code == 200:
                outcome["backend"] = response.json()["backend"]
        except Exception as exc:  # reported by the test's assertion, with what it was
            outcome["error"] = type(exc).__name__
        finally:
            slow.close()

    thread = threading.Thread(target=request)
    thread.start()
    return thread


def test_a_removed_backend_finishes_its_in_flight_request_new_ones_go_elsewhere_then_it_is_deleted(
        gateway, certs, backends):
    gateway.push(both())
    worker = gateway.worker()
    outcome: dict = {}
    thread = in_flight(certs, "/hold/inflight", outcome)
    holder = wait_for(lambda: next((p for p in (A, B) if "inflight" in backends.held(p)), None),
                      "the slow request reached a backend")
    keeper = B if holder == A else A
    gateway.push(only(keeper))

    fresh = Client(certs)
    try:
        answered = Counter(fresh.get(HOST, "/after-push").json()["backend"] for _ in range(20))
    finally:
        fresh.close()
    assert answered == Counter({NAME[keeper]: 20})
    assert thread.is_alive()  # still in flight on the removed backend...
    assert len(gateway.servers_of(REPLICA[holder])) == 1  # ...which HAProxy still holds, draining

    backends.release(holder, "inflight")
    thread.join(30)
    assert outcome == {"status": 200, "backend": NAME[holder]}
    wait_for(lambda: gateway.servers_of(REPLICA[holder]) == [], "the drained server was deleted from HAProxy")
    assert len(gateway.servers_of(REPLICA[keeper])) == 1
    assert gateway.workers() == ([worker], [])  # all of it without a reload


def test_a_request_longer_than_the_stop_grace_is_cut_then_its_server_deleted(gateway, certs, backends):
    gateway.push(only(A, grace=1))
    outcome: dict = {}
    thread = in_flight(certs, "/hold/too-long", outcome)
    wait_for(lambda: "too-long" in backends.held(A), "the slow request reached the backend")
    gateway.push(only(B, grace=1))
    thread.join(15)
    # Cut, not answered: HAProxy answers 502 on the streams it shuts, or the connection just ends.
    assert outcome in ({"status": 502}, {"error": "RemoteProtocolError"}), outcome
    wait_for(lambda: gateway.servers_of(REPLICA_A) == [], "the server was deleted once its request was cut")
    backends.release(A, "too-long")


def test_a_push_that_adds_a_backend_serves_it_at_once(gateway, client):
    gateway.push(only(A))
    assert client.get(HOST, "/before").json()["backend"] == "a"  # a connection kept alive across the push
    gateway.push(both())
    answered = Counter(client.get(HOST, "/added").json()["backend"] for _ in range(20))
    assert set(answered) == {"a", "b"}


def test_a_backend_removed_and_back_while_it_drains_serves_at_once_beside_its_draining_self(gateway, certs, backends):
    gateway.push(both())
    outcome: dict = {}
    thread = in_flight(certs, "/hold/back", outcome)
    holder = wait_for(lambda: next((p for p in (A, B) if "back" in backends.held(p)), None),
                      "the slow request reached a backend")
    keeper = B if holder == A else A
    gateway.push(only(keeper))
    gateway.push(both())
    assert len(gateway.servers_of(REPLICA[holder])) == 2  # the draining one and the new one
    fresh = Client(certs)
    try:
        assert {fresh.get(HOST, "/both-again").json()["backend"] for _ in range(20)} == {"a", "b"}
    finally:
        fresh.close()
    backends.release(holder, "back")
    thread.join(30)
    assert outcome == {"status": 200, "backend": NAME[holder]}
    wait_for(lambda: len(gateway.servers_of(REPLICA[holder])) == 1, "the drained one was deleted, the new one kept")
