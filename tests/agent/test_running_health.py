"""Health checks of running replicas (nodes/agent/runtime_health.py): the real daemon and
runtime over the fakes of tests/agent/fakes.py, whose guests are host processes listening on
127.0.0.1, checked by the real probe (health.check_once) at a test's short interval.

A replica that stops answering is reported `failing` after `health_failures` checks in a row
and passing again at its first pass, each change once; a reconnecting plane hears the current
health in `hello`; the check stops with the VM; a guest that never answers delays nobody else.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.health import check_once
from protocol.wire import DesiredReplica, ReplicaSpec, ReplicaStop
from tests.agent.plane import Node, eventually, make_runtime, plane, data_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.1
FAILURES = 3

# A guest that serves TCP on its port while the file `down` is absent, and closes its listening
# socket (connections refused) while it exists.
TOGGLED = """
import os, socket, sys, time
port, down = int(sys.argv[1]), sys.argv[2]
server = None
while True:
    if os.path.exists(down):
        if server is not None:
            server.close()
            server = None
        time.sleep(0.02)
        continue
    if server is None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(16)
        server.settimeout(0.02)
    try:
        server.accept()[0].close()
    except socket.timeout:
        pass
"""

# A guest that listens and never accepts: the first connection (the start's check) fills its
# one-place queue, and from then on every probe's SYN is dropped, as by a guest that holds its
# port and answers nothing.
MUTE = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(0)
time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest(name: str, script: str, *args: str) -> tuple[ReplicaSpec, int]:
    port = free_port()
    return ReplicaSpec(name=name, image="sh", traffic_port=port,
                       entrypoint=[sys.executable, "-c", script, str(port), *args]), port


class Probes:
    """The real probe, recording per port what each check found and the health the runtime
    held for the VM just before it: the order of verdicts and checks, not a clock."""

    def __init__(self) -> None:
        self.runtime = None
        self.seen: dict[int, list[tuple[str, str | None]]] = {}

    def of(self, port: int) -> list[tuple[str, str | None]]:
        return self.seen.get(port, [])

    async def __call__(self, host: str, port: int, **kw) -> str | None:
        before = next((i.health for i in self.runtime._infos.values() if i.host_port == port), "")
        result = await check_once(host, port, **kw)
        self.seen.setdefault(port, []).append((before, result))
        return result


def health_runtime(data_dir: Path, probes: Probes):
    runtime = make_runtime(data_dir, health_probe=probes, health_interval=INTERVAL, health_failures=FAILURES)
    probes.runtime = runtime
    return runtime


def statuses(plane, name: str) -> list[tuple[str, str, str]]:
    return [(m.report.state, m.report.health, m.report.reason)
            for m in plane.messages("replica.status", replica_id=name) if m.report.state == "running"]


async def test_a_replica_that_stops_answering_is_failing_after_n_checks_then_passing_once_each(plane, data_dir):
    probes = Probes()
    down = data_dir.parent / "down"
    spec, port = guest("web", TOGGLED, str(down))
    plane.desired["web"] = DesiredReplica(replica_id="web", spec=spec)
    node = await Node(data_dir, plane, runtime=health_runtime(data_dir, probes)).start()
    await eventually(lambda: len(probes.of(port)) >= 5, what="five checks of a running replica")
    assert all(result is None for _, result in probes.of(port))
    assert statuses(plane, "web") == [("running", "", "")]  # passing checks report nothing

    down.touch()
    await eventually(lambda: any(health for _, health, _ in statuses(plane, "web")), what="web reported failing")
    await eventually(lambda: any(before for before, _ in probes.of(port)), what="a check of the failing web")
    checks = probes.of(port)
    first_failing = next(i for i, (before, _) in enumerate(checks) if before == "failing")
    assert [result is None for _, result in checks[first_failing - FAILURES - 1:first_failing]] == \
        [True] + [False] * FAILURES  # failing after exactly N failed checks in a row, not before
    assert statuses(plane, "web")[1] == ("running", "failing", "health check failing: connection refused")

    # Still failing, for the same reason: nothing more to tell, however many checks fail.
    seen = len(checks)
    await eventually(lambda: len(probes.of(port)) >= seen + 2 * FAILURES, what="more failed checks")
    await node.said(plane)
    assert len(statuses(plane, "web")) == 2

    # A plane that reconnects learns the current health from the node's full report.
    hellos = len(plane.messages("hello"))
    await plane.connections[-1].ws.close()
    await eventually(lambda: len(plane.messages("hello")) > hellos, what="a new hello")
    [web] = [r for r in plane.messages("hello")[-1].replicas if r.replica_id == "web"]
    assert (web.state, web.health, web.reason) == ("running", "failing", "health check failing: connection refused")

    down.unlink()
    await eventually(lambda: statuses(plane, "web")[-1][1] == "", what="web passing again")
    seen = len(probes.of(port))
    await eventually(lambda: len(probes.of(port)) >= seen + FAILURES, what="more passing checks")
    await node.said(plane)
    assert statuses(plane, "web") == [("running", "", ""),
                                      ("running", "failing", "health check failing: connection refused"),
                                      ("running", "", "")]

    # Stopped: its checker ends with it, and no check follows.
    await plane.send(ReplicaStop(command_id="c-1", replica_id="web", grace_s=1))
    await eventually(lambda: not (data_dir / "vms" / "web").exists(), what="web removed")
    assert node.runtime._checkers == {}
    seen = len(probes.of(port))
    await asyncio.sleep(5 * INTERVAL)
    assert len(probes.of(port)) == seen
    await node.stop()


async def test_a_guest_that_never_answers_fails_by_timeout_and_delays_no_other(data_dir):
    probes = Probes()
    runtime = health_runtime(data_dir, probes)
    mute, mute_port = guest("mute", MUTE)
    web, web_port = guest("web", TOGGLED, str(data_dir.parent / "never"))
    await runtime.start(web)
    await runtime.start(mute)
    await eventually(lambda: runtime._infos["mute"].health == "failing", what="mute failing")
    assert runtime._infos["mute"].health_reason == f"health check failing: no answer within {INTERVAL:.1f}s"
    # Each mute check took its whole timeout; web was checked as often meanwhile, and passed.
    mute_checks = len(probes.of(mute_port))
    assert mute_checks >= FAILURES and all(result for _, result in probes.of(mute_port)[-FAILURES:])
    assert len(probes.of(web_port)) >= mute_checks - 1
    assert all(result is None for _, result in probes.of(web_port)) and runtime._infos["web"].health == ""
    await runtime.stop("mute")
    await runtime.stop("web")
    assert runtime._checkers == {}
    await runtime.close()


async def test_an_adopted_replica_keeps_its_last_health_until_its_checks_say_otherwise(data_dir):
    down = data_dir.parent / "down"
    spec, port = guest("web", TOGGLED, str(down))
    first = health_runtime(data_dir, Probes())
    await first.start(spec)
    down.touch()
    await eventually(lambda: first._infos["web"].health == "failing", what="failing")
    await first.close()  # the agent restarts; the VM runs on

    probes = Probes()
    second = health_runtime(data_dir, probes)
    [adopted] = await second.recover()
    assert (adopted.state, adopted.health) == ("running", "failing")
    down.unlink()
    await eventually(lambda: second._infos["web"].health == "", what="passing, checked by the new agent")
    assert probes.of(port) and (await second.get("web")).health_reason == ""
    await second.stop("web")
    await second.close()


async def test_a_replica_without_a_traffic_port_is_never_checked(data_dir):
    probes = Probes()
    runtime = health_runtime(data_dir, probes)
    await runtime.start(ReplicaSpec(name="worker", image="sh", args=["sleep 60"]))
    await eventually(lambda: runtime._checkers["worker"].done(), what="its checker ended")
    await asyncio.sleep(3 * INTERVAL)
    assert probes.seen == {}
    await runtime.stop("worker")
    await runtime.close()


# A guest that serves HTTP: GET /health answers 200 while the file `sick` is absent and 503
# while it exists; every other path answers 404.
HTTP_TOGGLED = """
import http.server, os, sys
port, sick = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = (503 if os.path.exists(sick) else 200) if self.path == "/health" else 404
        self.send_response(code)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


async def test_a_health_path_is_checked_over_http_and_an_error_answer_is_failing(data_dir):
    probes = Probes()
    runtime = health_runtime(data_dir, probes)
    sick = data_dir.parent / "sick"
    spec, port = guest("web", HTTP_TOGGLED, str(sick))
    await runtime.start(ReplicaSpec(**{**spec.to_dict(), "health_path": "/health"}))
    assert runtime._infos["web"].state == "running"
    sick.touch()  # the port still answers: only the HTTP check can tell
    await eventually(lambda: runtime._infos["web"].health == "failing", what="web failing on its 503")
    assert runtime._infos["web"].health_reason == "health check failing: HTTP 503 from GET /health"
    sick.unlink()
    await eventually(lambda: runtime._infos["web"].health == "", what="web passing again")
    await runtime.stop("web")
    await runtime.close()


@pytest.mark.parametrize("path", ["health", "/a b", "/x\r\nHost: evil", "/" + "a" * 256, "/é"])
async def test_a_health_path_that_would_bend_the_request_line_is_refused_before_anything_starts(data_dir, path):
    runtime = health_runtime(data_dir, Probes())
    spec, _ = guest("web", HTTP_TOGGLED, str(data_dir.parent / "sick"))
    with pytest.raises(AgentError, match="health path refused"):
        await runtime.start(ReplicaSpec(**{**spec.to_dict(), "health_path": path}))
    assert "web" not in runtime._infos and not (data_dir / "vms" / "web").exists()
    await runtime.close()
