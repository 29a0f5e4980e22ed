"""A stand-in control plane for the daemon tests, and a node to point at it.

FakePlane serves the agent endpoint on a real WebSocket (websockets.serve on 127.0.0.1, port 0)
the way the Channels consumer does: the node credential as Bearer (anything else: 403 before the
socket opens), `hello` answered with the full `desired` set carrying the last stored log seq per
replica, log lines stored once by (replica, seq) and acknowledged. It records every frame, so a
test can wait for what the agent sent and check what it never sent.

The node is the real daemon (nodes/agent/daemon.py) over a real MicroVmRuntime whose far sides
are the fakes of tests/agent/fakes.py: guests are host processes that behave like /init.

No VM boots and no network device is made: the runtime's far sides are tests/agent/fakes.py
(guests are host processes) and the plane listens on 127.0.0.1, so nothing leaves loopback
(DESIGN section 11); the tests that build real networks do it in tests/e2e's namespaces.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from protocol import wire as protocol
from nodes.agent.daemon import Daemon
from nodes.agent.join import Credential
from nodes.agent.runtime import MicroVmRuntime
from protocol.wire import Desired, DesiredReplica, Heartbeat, LogEntry, Logs, LogsAck, Message, NodeDrain, ReplicaSpec
from tests.agent.fakes import FakeImageConfig, FakeImageStore, FakeNetwork, FakeVmm, fake_accel, fake_kit

CREDENTIAL = "gnode_test-credential"
SH = FakeImageConfig(entrypoint=["/bin/sh", "-c"], cmd=["sleep 60"], env={"PATH": "/usr/bin:/bin"})
FAST_CLIENT = {"backoff_base_s": 0.05, "backoff_cap_s": 0.3, "open_timeout_s": 2.0}


def replica(replica_id: str, script: str = "sleep 60", *, image: str = "sh", grace: float = 10.0) -> DesiredReplica:
    return DesiredReplica(replica_id=replica_id, spec=ReplicaSpec(name=replica_id, image=image, args=[script]),
                          stop_grace_s=grace)


async def eventually(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Connection:
    ws: ServerConnection
    received: list[Message] = field(default_factory=list)
    desired_acks: dict[str, int] = field(default_factory=dict)  # acked_seq sent in its desired


class FakePlane:
    def __init__(self, *, credential: str = CREDENTIAL, auto_ack: bool = True, heartbeat_interval_s: float = 5.0):
        self.credential = credential
        self.auto_ack = auto_ack
        self.heartbeat_interval_s = heartbeat_interval_s
        self.desired: dict[str, DesiredReplica] = {}
        self.stored: dict[str, dict[int, LogEntry]] = {}
        self.duplicates = 0  # lines received again that were already stored
        self.handshakes = 0
        self.connections: list[Connection] = []
        self.on_logs = None  # optional hook(conn, message) -> bool: False = do not store or ack
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakePlane:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check,
                                   max_size=2 * protocol.MAX_FRAME_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _check(self, connection, request):
        self.handshakes += 1
        if request.path != "/ws/v1/agent/":
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint\n")
        if request.headers.get("Authorization") != f"Bearer {self.credential}":
            return connection.respond(HTTPStatus.FORBIDDEN, "node credential refused\n")
        return None

    def acked(self, replica_id: str) -> int:
        seqs = self.stored.get(replica_id, {})
        seq = 0
        while seq + 1 in seqs:  # what a plane may acknowledge: the unbroken run from 1
            seq += 1
        return seq

    def desired_message(self) -> Desired:
        return Desired(replicas=[replace(r, acked_seq=self.acked(r.replica_id)) for r in self.desired.values()],
                       heartbeat_interval_s=self.heartbeat_interval_s)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws)
        self.connections.append(conn)
        async for frame in ws:
            message = protocol.decode(frame, allowed=protocol.AGENT_MESSAGES)  # a bad frame fails the test
            conn.received.append(message)
            if message.type == "hello":
                desired = self.desired_message()
                conn.desired_acks = {r.replica_id: r.acked_seq for r in desired.replicas}
                await ws.send(protocol.encode(desired))
            elif isinstance(message, Logs):
                if self.on_logs is not None and not self.on_logs(conn, message):
                    continue
                store = self.stored.setdefault(message.replica_id, {})
                for line in message.lines:
                    if line.seq in store:
                        self.duplicates += 1
                    store[line.seq] = line
                if self.auto_ack:
                    await self.ack(message.replica_id, conn)

    async def ack(self, replica_id: str, conn: Connection | None = None, seq: int | None = None) -> None:
        conn = conn or self.connections[-1]
        await conn.ws.send(protocol.encode(LogsAck(replica_id=replica_id, seq=self.acked(replica_id) if seq is None else seq)))

    async def send(self, message: Message) -> None:
        await self.connections[-1].ws.send(protocol.encode(message))

    def messages(self, kind: str, *, replica_id: str | None = None, conn: int | None = None) -> list[Message]:
        conns = self.connections if conn is None else [self.connections[conn]]
        out = [m for c in conns for m in c.received if m.type == kind]
        if replica_id is not None:
            out = [m for m in out if getattr(m, "replica_id", None) == replica_id
                   or getattr(getattr(m, "report", None), "replica_id", None) == replica_id]
        return out

    def states(self, replica_id: str) -> list[str]:
        return [m.report.state for m in self.messages("replica.status", replica_id=replica_id)]


def make_runtime(data_dir: Path, images: FakeImageStore | None = None, vmm: FakeVmm | None = None,
                 **options) -> MicroVmRuntime:
    """`options` go to MicroVmRuntime (health_interval, health_probe, ...)."""
    images = images or FakeImageStore(data_dir.parent / "images", {"sh": SH})
    return MicroVmRuntime(data_dir, images=images, network=FakeNetwork(), vmm=vmm or FakeVmm(),
                          kit_provider=fake_kit, accel_provider=fake_accel, poll_interval=0.02, **options)


class ObservedDaemon(Daemon):
    """The real daemon, keeping every message from the plane it has finished handling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handled: list[Message] = []

    async def on_message(self, message: Message) -> None:
        await super().on_message(message)
        self.handled.append(message)


_markers = itertools.count(1)


class Node:
    """A daemon over a fake-backed runtime in this event loop; `start()` / `stop()` it."""

    def __init__(self, data_dir: Path, plane: FakePlane, runtime: MicroVmRuntime | None = None, *,
                 credential: str | None = None, **options):
        self.runtime = runtime or make_runtime(data_dir)
        options.setdefault("client_options", FAST_CLIENT)
        options.setdefault("shipper_options", {"poll_s": 0.05})
        cred = Credential(plane.url, 1, credential or plane.credential)
        self.daemon = ObservedDaemon(self.runtime, cred, data_dir, **options)
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> Node:
        self.task = asyncio.create_task(self.daemon.run(self._stop))
        await eventually(lambda: self.daemon.ready.is_set() or self.task.done(), what="daemon ready")
        return self

    async def heard(self, plane: FakePlane) -> None:
        """Returns once the node has handled every message the plane sent it so far: the plane
        sends a no-op command after them, and the connection delivers in order."""
        marker = NodeDrain(command_id=f"barrier-{next(_markers)}")
        await plane.send(marker)
        await eventually(lambda: marker in self.daemon.handled, what=f"the node to handle {marker.command_id}")

    async def said(self, plane: FakePlane) -> None:
        """Returns once the plane has received everything the node queued for it so far: a
        heartbeat naming a marker goes through the same outbox after them."""
        marker = f"barrier-{next(_markers)}"
        assert await self.daemon.client.send(Heartbeat(log_seqs={marker: 0})), "the node is not connected"
        await eventually(lambda: any(marker in m.log_seqs for m in plane.messages("heartbeat")),
                         what=f"heartbeat {marker} at the plane")

    async def settled(self, plane: FakePlane) -> None:
        """Proof, not a pause, that nothing more comes of what the plane sent so far: the node
        handled it, its supervisor has nothing left to do, and the plane has all it reported."""
        await self.heard(plane)
        await eventually(self.daemon.supervisor.idle, what="the supervisor idle")
        await self.said(plane)

    async def stop(self) -> int:
        self._stop.set()
        in_flight = await asyncio.wait_for(self.task, 10)
        if in_flight:  # the CLI exits here; in a test the leftover starts are cancelled
            for _, task in list(self.daemon.supervisor._ops.values()):
                task.cancel()
        return in_flight


def kill_guests(root: Path) -> None:
    """Every fake guest (and its workload, in its session) started under `root`."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(root).encode() in (proc / "cmdline").read_bytes():
                os.killpg(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture
async def plane():
    p = await FakePlane().start()
    yield p
    await p.close()


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    yield data
    kill_guests(tmp_path)
