"""Every WebSocket refuses cleanly (cloud/sockets.py, cloud/routing.py), tested against a real
daphne where the server is what matters: what a client actually receives for a path no route
serves, for a message over the limit, and for a frame header that announces one (refused before
its payload is read), on the log socket and on the agents' link; and through the ASGI
application itself for what any server gets (the 1009 on receive, a 404 where the server offers
the WebSocket Denial Response extension)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import struct
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from cloud.asgi import application
from cloud.deployments.models import LogLine
from protocol import wire as p
from tests.e2e.stack import Procs, answers_healthz, daphne_argv, database_url, free_port, wait_for
from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token
from tests.deployments.factories import DeploymentFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
LIMIT = 64 * 1024  # WS_MAX_MESSAGE_BYTES's default, which the daphne below runs with
AGENT_LIMIT = 2 * 1024 * 1024


class Daphne:
    """daphne alone (no Celery) on the test database, in a process of its own."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        run = secrets.token_hex(4)
        env = {**os.environ, "PYTHONPATH": str(REPO), "DJANGO_SETTINGS_MODULE": "cloud.settings", "DB_POOL": "0",
               "DATABASE_URL": database_url(connection.settings_dict),
               "CHANNELS_PREFIX": f"sockets-{run}", "CACHE_PREFIX": f"sockets-{run}"}
        for name in ("WS_MAX_MESSAGE_BYTES", "WS_AGENT_MAX_MESSAGE_BYTES"):
            env.pop(name, None)
        self.runner = Procs(tmp, env, REPO)
        self.runner.spawn("daphne", daphne_argv(self.port))
        wait_for(lambda: answers_healthz(self.url), timeout=60, what="daphne to answer /healthz")

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return (self.runner.logs / "daphne.log").read_text(errors="replace")

    def stop(self) -> None:
        self.runner.stop()


@pytest.fixture(scope="module")
def daphne(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        server = Daphne(tmp_path_factory.mktemp("daphne"))
    yield server
    server.stop()
    print(f"--- daphne.log (tail)\n{server.log()[-4000:]}")


def _reader():
    acme = TenantFactory(slug="acme")
    alice = UserFactory(username="alice@example.com")
    MembershipFactory(user=alice, tenant=acme, role="owner")
    deployment = DeploymentFactory(tenant=acme, name="web")
    token = issue_token(user=alice, scopes="deployments:read").token
    return f"/ws/v1/deployments/{deployment.pk}/logs", {"Authorization": f"Bearer {token}", "X-Tenant": "acme"}


@pytest.fixture
def reader():
    return _reader()


def _node_credential() -> str:
    from nodes import services
    from tests.factories import HardwareTypeFactory, LocationFactory

    hardware = HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=2, allowed_gpu_counts=[0])
    made = services.node_create(hostname="node-a", hardware_type=hardware, location=LocationFactory(),
                                public_address="127.0.0.1")
    inventory = p.Inventory(hostname="node-a", agent_version="test", cpus=2, memory_mib=4096, disk_gib=20,
                            accelerator="tcg")
    return services.node_join(token=made.join_token, inventory=inventory)[1]


# -- a path no route serves ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ws/v1/nothing", "/ws/v1/deployments/x/logs/more", "/ws/", "/not-a-socket"])
def test_a_websocket_to_a_path_no_route_serves_is_refused_before_it_opens_not_a_500(daphne, path):
    before = daphne.log().count("Exception inside application")
    with pytest.raises(InvalidStatus) as refused:
        connect(daphne.ws(path), open_timeout=5)
    # daphne 4.2 has no WebSocket Denial Response: closing before accepting is its 403.
    assert refused.value.response.status_code == 403
    assert daphne.log().count("Exception inside application") == before


async def test_where_the_server_offers_denial_responses_an_unknown_path_is_a_404():
    sent = []
    events = [{"type": "websocket.connect"}]

    async def receive():
        return events.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/v1/nothing", "raw_path": b"/ws/v1/nothing", "query_string": b"",
             "headers": [], "subprotocols": [], "extensions": {"websocket.http.response": {}}}
    await application(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 404
    assert json.loads(sent[1]["body"])["status"] == 404


# -- messages over the limit -------------------------------------------------------------------------

def test_a_message_over_the_limit_closes_the_log_socket_with_1009(daphne, reader):
    path, headers = reader
    before = daphne.log().count("Exception inside application")
    with connect(daphne.ws(path), additional_headers=headers, open_timeout=5) as ws:
        ws.send("x" * LIMIT)  # at the limit: read (and ignored) like anything a client says
        ws.send("x" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as closed:  # the first answer is to the second message
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert daphne.log().count("Exception inside application") == before


def _frame_header(length: int) -> bytes:
    """A masked client text frame's header announcing `length` bytes of payload."""
    return struct.pack("!BBQ", 0x81, 0x80 | 127, length) + secrets.token_bytes(4)


def _open_raw(daphne, path: str, headers: dict) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daphne.port), timeout=10)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response[:200]
    return sock


def _close_code(sock: socket.socket) -> int:
    """The close code of the first close frame the server sends (other frames skipped)."""
    buffer = b""
    while True:
        while len(buffer) < 2:
            chunk = sock.recv(65536)
            assert chunk, "the server hung up without a close frame"
            buffer += chunk
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        start = 2
        if length == 126:
            length, start = struct.unpack("!H", buffer[2:4])[0], 4
        elif length == 127:
            length, start = struct.unpack("!Q", buffer[2:10])[0], 10
        while len(buffer) < start + length:
            buffer += sock.recv(65536)
        payload, buffer = buffer[start:start + length], buffer[start + length:]
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


def test_a_frame_announcing_more_than_the_limit_is_refused_before_its_payload_is_read(daphne, reader):
    """A client announces a 1 GiB message and sends a little of it: the socket is closed with
    1009 at once, rather than daphne waiting for (and holding) the whole message."""
    path, headers = reader
    sock = _open_raw(daphne, path, headers)
    try:
        sock.sendall(_frame_header(1 << 30) + b"x" * 4096)
        sock.settimeout(5)
        assert _close_code(sock) == 1009
    finally:
        sock.close()


def test_a_message_over_the_agent_limit_closes_the_link_and_stores_nothing(daphne):
    credential = _node_credential()
    before = daphne.log().count("Exception inside application")
    with connect(daphne.ws("/ws/v1/agent/"), additional_headers={"Authorization": f"Bearer {credential}"},
                 open_timeout=5, max_size=None) as ws:
        ws.send(p.encode(p.Hello(inventory=p.Inventory(hostname="node-a", agent_version="test", cpus=2,
                                                       memory_mib=4096, disk_gib=20, accelerator="tcg"))))
        assert json.loads(ws.recv(timeout=10))["type"] == "desired"
        line = {"seq": 1, "ts": 1.0, "stream": "stdout", "message": "x" * 60_000}
        lines = [{**line, "seq": seq} for seq in range(1, 2 + AGENT_LIMIT // 60_000)]
        ws.send(json.dumps({"type": "logs", "version": p.PROTOCOL_VERSION, "replica_id": "r", "lines": lines}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert LogLine.objects.count() == 0
    assert daphne.log().count("Exception inside application") == before


async def test_under_any_server_a_message_over_the_limit_never_reaches_the_consumer(settings):
    settings.WS_MAX_MESSAGE_BYTES = 1000
    path, headers = await sync_to_async(_reader)()
    communicator = WebsocketCommunicator(application, path, headers=[
        (name.lower().encode(), value.encode()) for name, value in headers.items()])
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="é" * 500)  # 1,000 bytes in UTF-8: at the limit
    await communicator.send_to(text_data="é" * 501)
    # The first output answers the second message: the first one was taken without a word.
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 1009}
