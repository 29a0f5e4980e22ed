"""Pushes under traffic: a keep-alive client that never retries loses no request while backends,
keys and other routes change, no request goes to a backend its push removed, a long stream on one
route outlives every change around it, and HAProxy is never reloaded for any of it."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from tests.gateway.conftest import GATEWAY_IP, Client, KeepAlive, wait_for
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
PORTS = {"b1": 18051, "b2": 18052, "b3": 18053, "b4": 18054, "other": 18055}
REPLICAS = {name: f"00000000-0000-4000-8000-0000000005{n:02d}" for n, name in enumerate(PORTS)}
LOOP_HOST = "loop.gantry.localhost"
REQUESTS, PUSHES = 1000, 24


@pytest.fixture(scope="module", autouse=True)
def started(backends):
    for name, port in PORTS.items():
        backends.http(port, name)


def of(*names: str) -> list[dict]:
    return [backend(GATEWAY_IP, PORTS[name], REPLICAS[name]) for name in names]


def scenario() -> list[tuple[list[str], dict]]:
    """PUSHES tables: the loop route's backends added, removed and swapped, a private route's keys
    made and revoked, other routes coming and going; with what the loop route has in each."""
    sets = [["b1"], ["b1", "b2"], ["b2"], ["b2", "b3"], ["b3", "b4"], ["b4"], ["b1", "b4"], ["b1", "b2", "b3"]]
    tables = []
    for n in range(PUSHES):
        loop = sets[n % len(sets)]
        routes = [route("loop", *of(*loop), stop_grace_seconds=30),
                  route("keys", *of("other"), access="private", keys=tuple(f"gk_{k}" for k in range(n % 4)))]
        routes += [route(f"extra-{k}", *of("other")) for k in range(n % 5)]
        if n % 3 == 0:
            routes.append(route("off", unavailable="starting"))
        tables.append((loop, table(*routes)))
    return tables


def test_a_keep_alive_client_loses_no_request_and_never_reaches_a_removed_backend(gateway, certs):
    pushes = scenario()
    gateway.push(table(route("loop", *of("b1"), stop_grace_seconds=30)))
    worker = gateway.worker()
    # (started, returned, backends of the loop route from then on), the first one already served
    timeline: list[tuple[float, float, set[str]]] = [(0.0, time.monotonic(), {"b1"})]
    answers: list[tuple[float, int, str]] = []  # (sent at, status, backend)
    failures: list[str] = []
    done = threading.Event()
    client = KeepAlive(certs, LOOP_HOST)

    def loop():
        try:
            while not done.is_set() or len(answers) < REQUESTS:
                sent = time.monotonic()
                status, body = client.get(f"/loop/{len(answers)}")
                answers.append((sent, status, json.loads(body).get("backend", "") if status == 200 else ""))
        except Exception as exc:  # the test fails on it below, with what it was
            failures.append(f"after {len(answers)} requests: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        for loop_backends, pushed in pushes:
            mark = len(answers)
            wait_for(lambda: len(answers) >= mark + 25 or failures, "requests between pushes")
            started = time.monotonic()
            gateway.push(pushed)
            timeline.append((started, time.monotonic(), set(loop_backends)))
    finally:
        done.set()
        thread.join(120)
        client.close()

    assert failures == []
    assert len(answers) >= REQUESTS
    assert [status for _, status, _ in answers if status != 200] == []
    strays = []
    for sent, _, served_by in answers:
        # Sent after push k returned: only push k's backends, or push k+1's if it had started.
        k = max(i for i, (_, returned, _) in enumerate(timeline) if returned <= sent)
        crossing = k + 1 < len(timeline) and timeline[k + 1][0] <= sent
        allowed = timeline[k][2] | (timeline[k + 1][2] if crossing else set())
        if served_by not in allowed:
            strays.append((k, served_by, sorted(allowed)))
    assert strays == []
    assert {backend for _, _, backend in answers} == {"b1", "b2", "b3", "b4"}
    assert gateway.workers() == ([worker], [])  # 24 pushes, no reload
    # The backends that left are gone from HAProxy once drained; the last table's stay.
    wait_for(lambda: sorted(n.rsplit("-", 1)[0] for ns in gateway.servers().values() for n in ns)
             == sorted([REPLICAS[name] for name in pushes[-1][0]] + [REPLICAS["other"]] * (1 + (PUSHES - 1) % 5)),
             "only the last table's servers are left")


def test_a_long_stream_outlives_pushes_that_change_and_remove_other_routes_and_its_own_other_backends(
        gateway, certs, backends):
    def tables(a_backends: list[str], b: list[str] | None) -> dict:
        routes = [route("stream", *of(*a_backends), stop_grace_seconds=1)]
        if b is not None:
            routes.append(route("bee", *of(*b), stop_grace_seconds=1))
        return table(*routes)

    gateway.push(tables(["b1", "b2"], ["b3"]))
    worker = gateway.worker()
    client = Client(certs)
    events: list[str] = []
    started = time.monotonic()
    try:
        with client.stream("GET", "stream.gantry.localhost", "/tokens/long", timeout=30) as response:
            lines = (line for line in response.iter_lines() if line)
            events.append(next(lines))
            holder = events[0].split(" from ")[1]
            other = "b2" if holder == "b1" else "b1"
            for a_backends, b in [([holder, other], ["b3", "b4"]),  # route B changes
                                  ([holder, other], None),  # route B is removed
                                  ([holder, "b4"], None),  # A's other backend is swapped...
                                  ([holder], ["b3"]),  # ...then removed, and B comes back
                                  ([holder, "b3"], ["b4"])]:
                gateway.push(tables(a_backends, b))
                time.sleep(1)  # the stream keeps flowing between pushes, over 5 s in all
                events.append(next(lines))
            backends.release(PORTS[holder], "long")
            events += list(lines)
    finally:
        client.close()
    assert time.monotonic() - started > 5
    assert events[-1] == "data: end"
    numbers = [int(event.split()[1]) for event in events[:-1]]
    assert numbers == sorted(numbers) and len(events) > 40  # one stream, in order, every 0.1 s
    assert gateway.workers() == ([worker], [])


def test_pushes_alone_never_reload_haproxy(gateway):
    """Every kind of change a push can make, one after another, and the same worker throughout."""
    worker = gateway.worker()
    changes = itertools.cycle([
        table(route("x", *of("b1"))),
        table(route("x", *of("b1"), access="private", keys=("gk_a",))),
        table(route("x", *of("b1"), access="private", keys=("gk_b",), max_body_bytes=10, timeout_s=30)),
        table(route("x", unavailable="no capacity"), route("y", *of("b2"))),
        table(route("y", *of("b2", "b3"), stop_grace_seconds=0)),
        table(),
    ])
    for _ in range(12):
        gateway.push(next(changes))
    assert gateway.workers() == ([worker], [])
    assert not gateway.said("loading a new config")
