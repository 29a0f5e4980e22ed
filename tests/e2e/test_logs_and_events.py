"""Logs and events, live and complete (issue 16), against the real thing: daphne, Redis,
PostgreSQL, a Celery worker with beat, a real agent and a real microVM.

- A workload prints 20,000 numbered lines on stdout and 20,000 on stderr (after a few hostile
  ones: ANSI, invalid UTF-8, a NUL, a 1 MB line) while its agent is killed -9 twice and daphne
  is restarted once. History, and a live follower that reconnects with its last cursor, both
  hold every line exactly once, each stream in order; the hostile lines come back safely.
- An SSE follower that drops and resumes with Last-Event-ID three times during a deploy, two
  scalings and a stop sees every event of its tenant once, in order.
- Another tenant's deployment is refused on the log socket exactly as a missing one, is never
  in the SSE stream, and a customer's token opens no agent socket.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from tests.e2e.conftest import Plane, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(1200)]

LINES = 20_000
MEGABYTE = 1 << 20

# busybox sh in the guest. Hostile lines first, then the numbered ones, slowed down a little so
# the kills and the restart land while it prints (about a minute under TCG), then the HTTP
# server the hello template's health check wants.
SCRIPT = r"""
printf '\033[31mred\033[0m plain\n'
printf 'bad \377\376 bytes\n'
printf 'nul\000byte\n'
head -c %(mb)d /dev/zero | tr '\000' x; echo
(
  i=0
  while [ $i -lt %(n)d ]; do
    i=$((i+1)); echo "out $i"; echo "err $i" >&2
    [ $((i %% 250)) -eq 0 ] && sleep 1
  done
  echo "printed all" >&2
) &
mkdir -p /tmp/www; echo ok > /tmp/www/index.html
exec httpd -f -p 8080 -h /tmp/www
""" % {"n": LINES, "mb": MEGABYTE}


@pytest.fixture
def plane(catalog, tmp_path, local_registry, vmm_kit):
    # A liveness window longer than an agent's restart or daphne's: this test is about lines
    # surviving those, not about failover (test_deployments_run.py covers a node going silent).
    plane = Plane(tmp_path, NODE_LIVENESS_WINDOW_S="120")
    yield plane
    plane.stop()
    for name in plane.procs:
        print(f"--- {name}.log (tail)\n{plane.log(name)}")


def ws_url(plane, path: str) -> str:
    return plane.url.replace("http://", "ws://") + path


class Follower(threading.Thread):
    """A live log follower as a customer would write one: whenever the socket drops, it
    reconnects with `after=` the last cursor it got."""

    def __init__(self, plane, deployment_id: str, headers: dict):
        super().__init__(daemon=True)
        self.url = ws_url(plane, f"/ws/v1/deployments/{deployment_id}/logs")
        self.headers = headers
        self.lines: list[dict] = []
        self.notices: list[dict] = []
        self.cursor = "0"
        self.connections = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with connect(f"{self.url}?after={self.cursor}", additional_headers=self.headers,
                             open_timeout=5, max_size=None) as ws:
                    self.connections += 1
                    while not self.done.is_set():
                        try:
                            frame = ws.recv(timeout=1)
                        except TimeoutError:
                            continue
                        for text in frame.split("\n"):
                            item = json.loads(text)
                            if "type" in item:
                                self.notices.append(item)
                            else:
                                self.lines.append(item)
                                self.cursor = item["cursor"]
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                time.sleep(0.3)


def history(api, deployment_id: str) -> list[dict]:
    lines, cursor = [], "0"
    while True:
        page = api.get(f"/deployments/{deployment_id}/logs", params={"after": cursor, "limit": 10000}).json()
        lines.extend(page["logs"])
        if not page["has_more"]:
            return lines
        cursor = page["next_cursor"]


def check_complete(lines: list[dict], what: str) -> None:
    cursors = [int(line["cursor"]) for line in lines]
    assert cursors == sorted(set(cursors)), f"{what}: a cursor repeated or went back"
    seqs = [line["seq"] for line in lines if line["seq"] is not None]
    assert len(seqs) == len(set(seqs)), f"{what}: a line was stored or sent twice"
    for stream, word in (("stdout", "out"), ("stderr", "err")):
        numbered = [line["message"] for line in lines if line["stream"] == stream and line["message"].startswith(word + " ")]
        assert numbered == [f"{word} {i}" for i in range(1, LINES + 1)], f"{what}: {stream} lost, repeated or reordered lines"
    assert not [line for line in lines if line["stream"] == "system"], f"{what}: a gap was reported"


def check_hostile(lines: list[dict], what: str) -> None:
    out = [line for line in lines if line["stream"] == "stdout"]
    assert out[0]["message"] == "\x1b[31mred\x1b[0m plain", what
    assert out[1]["message"] == "bad \ufffd\ufffd bytes", what
    assert out[2]["message"] == "nul\ufffdbyte", what
    pieces = out[3:3 + 16]
    assert [p["continued"] for p in pieces] == [True] * 15 + [False], what
    assert "".join(p["message"] for p in pieces) == "x" * MEGABYTE, what
    assert out[19]["message"] == "out 1", what


def stored(deployment_id) -> int:
    from cloud.deployments.models import LogLine

    return LogLine.objects.filter(deployment_id=deployment_id).count()


def printed(node, deployment_id) -> int:
    """Bytes the workload wrote so far: QEMU appends them to the VM's files, agent or none."""
    from cloud.deployments.models import Replica

    (replica,) = Replica.objects.filter(deployment_id=deployment_id)
    vm = node.data_dir / "vms" / str(replica.uid)
    return sum((vm / name).stat().st_size for name in ("stdout.raw", "stderr.raw"))


def kill_the_agent_while_the_vm_prints(node, deployment_id) -> None:
    node.kill(signal.SIGKILL)
    before = printed(node, deployment_id)
    wait_for(lambda: printed(node, deployment_id) > before, timeout=120,
             what="the VM to print on, into its files, with no agent at all")
    node.start()


THE_END = "the end: every line before this one was sent"


def the_end(replica) -> None:
    """A line after every other in the replica's log (the plane's own, stream `system`): whoever
    has received it has received whatever was sent before it, duplicates included."""
    from django.utils import timezone

    from cloud.deployments.services.logs import log_system_line

    log_system_line(replica=replica, message=THE_END, ts=timezone.now())


def test_every_line_reaches_history_and_a_reconnecting_follower_once_through_agent_kills_and_a_daphne_restart(
        plane, make_node, customer):
    from cloud.deployments.models import Replica
    from nodes.models import HardwareType, Node

    node = make_node("node-a")
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    api = httpx.Client(base_url=f"{plane.url}/api/v1", headers=customer, timeout=60)
    created = api.post("/deployments", json={
        "name": "chatty", "template_id": "hello", "gpus_per_container": 0,
        "hardware_id": HardwareType.objects.get(slug="cpu-small").pk, "entrypoint": ["/bin/sh", "-c"], "args": [SCRIPT]})
    assert created.status_code == 201, created.text
    deployment_id = created.json()["deployment"]["id"]
    follower = Follower(plane, deployment_id, {"Authorization": customer["Authorization"], "X-Tenant": "acme"})
    follower.start()
    total = 3 + 16 + 2 * LINES + 1
    try:
        wait_for(lambda: stored(deployment_id) > 4000, timeout=420, what="the first 4,000 lines stored")
        kill_the_agent_while_the_vm_prints(node, deployment_id)
        wait_for(lambda: stored(deployment_id) > 16000, timeout=300, what="16,000 lines stored")
        plane.restart_web()
        wait_for(lambda: stored(deployment_id) > 28000, timeout=300, what="28,000 lines stored")
        kill_the_agent_while_the_vm_prints(node, deployment_id)
        wait_for(lambda: stored(deployment_id) >= total, timeout=420, what="every line stored")
        wait_for(lambda: len(follower.lines) >= total, timeout=120, what="the follower to have every line")
        (replica,) = Replica.objects.filter(deployment_id=deployment_id)
        the_end(replica)
        wait_for(lambda: follower.lines[-1]["message"] == THE_END, timeout=60, what="the follower to get the end")
    finally:
        follower.done.set()
        follower.join(timeout=10)
    lines = history(api, deployment_id)
    assert (lines[-1]["stream"], lines[-1]["message"]) == ("system", THE_END)
    assert (follower.lines[-1]["cursor"], follower.lines[-1]["message"]) == (lines[-1]["cursor"], THE_END)
    lines, follower.lines = lines[:-1], follower.lines[:-1]
    assert len(lines) == total
    check_complete(lines, "history")
    check_hostile(lines, "history")
    assert len(follower.lines) == total
    check_complete(follower.lines, "follower")
    check_hostile(follower.lines, "follower")
    assert [line["cursor"] for line in follower.lines] == [line["cursor"] for line in lines]
    assert follower.connections >= 2 and not follower.notices  # it reconnected after daphne's restart
    replica.refresh_from_db()
    assert replica.generation == 1 and replica.state == "running"  # one incarnation throughout
    assert api.post(f"/deployments/{deployment_id}/stop").status_code == 200


class SseFollower(threading.Thread):
    """Follows /api/v1/events as a browser's EventSource would: whenever the connection is gone
    it comes back with Last-Event-ID. `drop_soon()` makes it hang up right after the next event
    it gets, and stay away a moment while more commit."""

    def __init__(self, plane, headers: dict):
        super().__init__(daemon=True)
        self.url = f"{plane.url}/api/v1/events"
        self.headers = headers
        self.events: list[dict] = []
        self.last_id: str | None = None
        self.connections = 0
        self.to_drop = 0
        self.dropped = 0
        self.done = threading.Event()

    def drop_soon(self) -> None:
        self.to_drop += 1

    def run(self) -> None:
        while not self.done.is_set():
            headers = dict(self.headers)
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(5, read=30)) as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    self.connections += 1
                    if self._read(response):
                        time.sleep(2)  # away for a while: events commit meanwhile
            except (httpx.HTTPError, OSError):
                time.sleep(0.3)

    def _read(self, response) -> bool:
        """True when it hangs up on purpose."""
        message: dict = {}
        for line in response.iter_lines():
            if self.done.is_set():
                return False
            if line.startswith("id: "):
                message["id"] = line[4:]
            elif line.startswith("data: "):
                message["data"] = json.loads(line[6:])
            elif line == "" and "data" in message:
                self.events.append(message["data"])
                self.last_id = message["id"]
                message = {}
                if self.to_drop:
                    self.to_drop -= 1
                    self.dropped += 1
                    return True
        return False


def test_an_sse_follower_that_drops_three_times_sees_every_event_once_in_order(plane, make_node, customer):
    from cloud.deployments.models import Event, Replica
    from nodes.models import HardwareType, Node

    node = make_node("node-a")
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    follower = SseFollower(plane, customer)
    follower.start()
    wait_for(lambda: follower.connections == 1, timeout=30, what="the follower to subscribe")
    api = httpx.Client(base_url=f"{plane.url}/api/v1", headers=customer, timeout=60)
    created = api.post("/deployments", json={"name": "hi", "template_id": "hello", "gpus_per_container": 0,
                                             "hardware_id": HardwareType.objects.get(slug="cpu-small").pk})
    assert created.status_code == 201, created.text
    deployment_id = created.json()["deployment"]["id"]

    def status():
        return api.get(f"/deployments/{deployment_id}").json()["deployment"]

    def in_db():
        return list(Event.objects.filter(tenant__slug="acme").order_by("id").values_list("id", flat=True))

    try:
        follower.drop_soon()  # during the deploy
        wait_for(lambda: status()["status"] == "running", timeout=300, what="running")
        follower.drop_soon()  # during the scale-up
        assert api.patch(f"/deployments/{deployment_id}", json={"replica_count": 2}).status_code == 200
        wait_for(lambda: status()["ready_replicas"] == 2, timeout=300, what="two replicas running")
        follower.drop_soon()  # during the scale-down and the stop
        assert api.patch(f"/deployments/{deployment_id}", json={"replica_count": 1}).status_code == 200
        wait_for(lambda: Replica.objects.filter(deployment_id=deployment_id, state="stopped").count() == 1,
                 timeout=120, what="scale-down done")
        assert api.post(f"/deployments/{deployment_id}/stop").status_code == 200
        wait_for(lambda: status()["status"] == "stopped", timeout=120, what="stopped")
        wait_for(lambda: [e["id"] for e in follower.events] == in_db() or len(follower.events) > len(in_db()),
                 timeout=60, what="the follower to have every event")
    finally:
        follower.done.set()
        follower.join(timeout=40)
    assert [e["id"] for e in follower.events] == in_db(), "an event was missed, repeated or reordered"
    assert follower.dropped == 3 and follower.connections >= 4
    kinds = [e["type"] for e in follower.events]
    # hello serves HTTP: a replica scaled away or stopped drains (out of the gateway's pool first).
    for kind in ("deployment.created", "replica.placed", "replica.running", "deployment.scaled", "replica.draining",
                 "replica.stopped", "deployment.stopped"):
        assert kind in kinds, kind
    assert all(e["deployment_id"] == deployment_id for e in follower.events)


def test_another_tenants_deployment_is_refused_on_both_sockets_and_absent_from_the_stream(plane, customer):
    from cloud.deployments.services import event_record
    from tests.deployments.factories import DeploymentFactory, ReplicaFactory
    from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

    evil = TenantFactory(slug="evil")
    mallory = UserFactory(username="mallory@example.com")
    MembershipFactory(user=mallory, tenant=evil, role="owner")
    theirs = DeploymentFactory(tenant=evil, name="mallory-secret-dep")
    their_replica = ReplicaFactory(deployment=theirs, ordinal=0)
    event_record(tenant=evil, deployment=theirs, type="test.secret", payload={"note": "mallory-secret-event"})
    mallory_headers = {"Authorization": f"Bearer {issue_token(user=mallory, scopes='deployments:read').token}"}

    def first_frame(deployment_id, headers):
        with connect(ws_url(plane, f"/ws/v1/deployments/{deployment_id}/logs"), additional_headers=headers,
                     open_timeout=5) as ws:
            frame = ws.recv(timeout=10)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            return frame.replace(str(deployment_id), "<id>"), closed.value.rcvd.code

    alice = {"Authorization": customer["Authorization"], "X-Tenant": "acme"}
    assert first_frame(theirs.pk, alice) == first_frame("11111111-2222-3333-4444-555555555555", alice)
    assert first_frame(theirs.pk, alice)[1] == 4404
    assert "mallory-secret" not in first_frame(theirs.pk, alice)[0]
    # Her own socket opens (the refusal above is about tenancy, not a broken route).
    with connect(ws_url(plane, f"/ws/v1/deployments/{theirs.pk}/logs"), additional_headers=mallory_headers,
                 open_timeout=5) as ws:
        the_end(their_replica)
        assert THE_END in ws.recv(timeout=30)  # her first frame is her line, not an error

    stream = httpx.get(f"{plane.url}/api/v1/events", params={"follow": "false"}, headers=customer, timeout=30)
    assert stream.status_code == 200 and "mallory-secret" not in stream.text
    own = httpx.get(f"{plane.url}/api/v1/events", params={"follow": "false"}, headers=mallory_headers, timeout=30)
    assert "mallory-secret-event" in own.text
    filtered = httpx.get(f"{plane.url}/api/v1/events", params={"deployment": str(theirs.pk)}, headers=customer, timeout=30)
    assert filtered.status_code == 404

    with pytest.raises(InvalidStatus) as refused:  # a customer's token is no node credential
        connect(ws_url(plane, "/ws/v1/agent/"), additional_headers={"Authorization": customer["Authorization"]},
                open_timeout=5)
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):  # nor may a page of another origin open a log socket
        connect(ws_url(plane, f"/ws/v1/deployments/{theirs.pk}/logs"), additional_headers=mallory_headers,
                origin="http://evil.example", open_timeout=5)
