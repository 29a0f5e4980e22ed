"""wait_healthy against real sockets on loopback, and inside a test namespace."""

from __future__ import annotations

import asyncio
import socket

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.health import check_once, wait_healthy
from tests.agent.conftest_netns import netns_factory, node_netns  # noqa: F401  (fixtures)


async def _serve(handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _http(status: str):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return handler


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_tcp_check_passes_on_a_listening_port():
    async def accept(reader, writer):
        writer.close()

    server, port = await _serve(accept)
    async with server:
        await wait_healthy("127.0.0.1", port, timeout=2)


async def test_http_check_accepts_any_status_below_500():
    server, port = await _serve(_http("404 Not Found"))
    async with server:
        await wait_healthy("127.0.0.1", port, timeout=2, http_path="/health")


async def test_http_5xx_fails_with_the_status_as_reason():
    server, port = await _serve(_http("503 Service Unavailable"))
    async with server:
        with pytest.raises(AgentError) as err:
            await wait_healthy("127.0.0.1", port, timeout=0.6, http_path="/health", interval=0.1)
    assert err.value.message.startswith("health check failed: ")
    assert "HTTP 503 from GET /health" in err.value.message


async def test_closed_port_fails_with_connection_refused_at_the_timeout():
    port = _closed_port()
    with pytest.raises(AgentError) as err:
        await wait_healthy("127.0.0.1", port, timeout=0.5, interval=0.1)
    assert "connection refused" in err.value.message
    assert f"127.0.0.1:{port}" in err.value.message
    assert err.value.message.endswith("(gave up after 0.5s)")  # at its timeout, for that reason


async def test_silent_server_fails_with_a_timeout_reason():
    hold: list[asyncio.StreamWriter] = []

    async def silent(reader, writer):
        hold.append(writer)  # accept and never answer

    server, port = await _serve(silent)
    async with server:
        with pytest.raises(AgentError) as err:
            await wait_healthy("127.0.0.1", port, timeout=0.5, http_path="/")
    for writer in hold:
        writer.close()
    assert "no answer within" in err.value.message


async def test_not_http_fails_with_what_came_back():
    async def banner(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    server, port = await _serve(banner)
    async with server:
        with pytest.raises(AgentError) as err:
            await wait_healthy("127.0.0.1", port, timeout=0.4, http_path="/", interval=0.1)
    assert "not an HTTP answer" in err.value.message


async def test_becomes_healthy_when_the_port_opens_later():
    port = _closed_port()

    answered = []
    ok = _http("200 OK")

    async def answer(reader, writer):
        answered.append(True)
        await ok(reader, writer)

    async def open_later() -> asyncio.Server:
        await asyncio.sleep(0.4)
        return await asyncio.start_server(answer, "127.0.0.1", port)

    opener = asyncio.create_task(open_later())
    await wait_healthy("127.0.0.1", port, timeout=5, http_path="/", interval=0.05)
    assert answered  # healthy because the server it waited for answered
    (await opener).close()


@pytest.mark.netns
async def test_check_runs_inside_a_namespace(node_netns, tmp_path):
    # The listener exists only inside the namespace, as a VM's published port does in the
    # namespace tests.
    await asyncio.to_thread(node_netns.serve_http, 18080, tmp_path)

    await wait_healthy("127.0.0.1", 18080, timeout=30, http_path="/", netns=node_netns.name)
    with pytest.raises(AgentError) as err:
        await wait_healthy("127.0.0.1", 18081, timeout=1, netns=node_netns.name)
    assert "connection refused" in err.value.message


async def _hostile(handler, *, http_path: str | None = "/health", timeout: float = 0.5) -> tuple[str | None, float]:
    """What one check_once of a server running `handler` says, and how long it took."""
    held: list[asyncio.StreamWriter] = []

    async def keep(reader, writer):
        held.append(writer)
        await handler(reader, writer)

    server, port = await _serve(keep)
    async with server:
        began = asyncio.get_running_loop().time()
        reason = await check_once("127.0.0.1", port, timeout=timeout, http_path=http_path)
        took = asyncio.get_running_loop().time() - began
    for writer in held:
        writer.close()
    return reason, took


async def test_one_check_passes_or_says_why_in_the_words_of_the_start_check():
    server, port = await _serve(_http("200 OK"))
    async with server:
        assert await check_once("127.0.0.1", port, timeout=1, http_path="/") is None
        assert await check_once("127.0.0.1", port, timeout=1) is None
    assert await check_once("127.0.0.1", _closed_port(), timeout=1) == "connection refused"
    assert (await _hostile(_http("503 Service Unavailable")))[0] == "HTTP 503 from GET /health"


async def test_a_hostile_guest_costs_one_check_its_timeout_and_never_more():
    """Holding the connection open, trickling a status line that never ends, or sending an endless
    one: every check is over within its timeout (the reader is bounded at 4 KiB)."""
    async def hold(reader, writer):
        await asyncio.sleep(30)

    async def trickle(reader, writer):
        for _ in range(600):
            writer.write(b"H")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def endless(reader, writer):
        try:
            for _ in range(1024):
                writer.write(b"X" * 65536)  # 64 MiB in all, no newline
                await writer.drain()
        except ConnectionError:
            pass  # the check hung up after 4 KiB, as it should

    async def garbage(reader, writer):
        writer.write(bytes(range(256)) + b"\n")
        await writer.drain()

    for handler, expected in ((hold, "no answer within 0.5s"), (trickle, "no answer within 0.5s"),
                              (endless, "no HTTP status line in the answer"), (garbage, "not an HTTP answer: ")):
        reason, took = await _hostile(handler)
        assert reason.startswith(expected) and took < 1.5, (handler.__name__, reason, took)
