"""A replica's health check: its traffic port accepts TCP, and answers HTTP if asked.

A replica becomes `running` only once `wait_healthy` returns. The check is retried every
`interval` until `timeout`; the AgentError it raises carries the last reason seen, which is
what the customer reads, so reasons are plain words ("connection refused", "HTTP 503").
`check_once` is one attempt, as a running replica is checked (runtime_health.py).

Every attempt is bounded however the guest behaves: its whole exchange (connect, request,
status line, close) runs under one timeout, and the answer is read into a buffer of at most
_MAX_STATUS_LINE bytes, so a guest that holds the connection open, trickles bytes or sends an
endless status line costs one attempt's time and 4 KiB, never a stalled checker.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Awaitable, Callable

from pyroute2.netns import create_socket

from nodes.agent.errors import AgentError

# One attempt may not eat the whole budget: a workload that accepts but answers slowly at
# first is given several tries, while a slow TCG guest still gets ten seconds per answer.
_ATTEMPT_CAP_S = 10.0
_MIN_ATTEMPT_S = 0.1
_MAX_STATUS_LINE = 4096


class _Unhealthy(Exception):
    pass


async def wait_healthy(
    host: str,
    port: int,
    *,
    timeout: float,
    http_path: str | None = None,
    interval: float = 0.05,
    netns: str | None = None,
    on_failure: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Return once host:port is healthy; raise AgentError with the last reason at `timeout`.

    `netns` runs the check from inside a named network namespace: the one the VMs' network
    lives in under `--netns`, where their addresses are reachable and the agent's own are not.
    `on_failure` hears the reason of each failed attempt (the runtime tells the plane).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    target = f"{host}:{port}{http_path or ''}"
    last = "no attempt completed"
    while True:
        if deadline - loop.time() <= 0:
            raise AgentError(f"health check failed: {target}: {last} (gave up after {timeout:g}s)")
        # The clock of an attempt starts once its socket exists (see _attempt).
        reason = await _attempt(host, port, http_path, netns,
                                lambda: min(max(deadline - loop.time(), _MIN_ATTEMPT_S), _ATTEMPT_CAP_S))
        if reason is None:
            return
        last = reason
        if on_failure is not None:
            await on_failure(last)
        await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))


async def check_once(host: str, port: int, *, timeout: float, http_path: str | None = None,
                     netns: str | None = None) -> str | None:
    """One attempt, over within `timeout` whatever the guest does: None when healthy, else why
    not, in the words wait_healthy uses."""
    return await _attempt(host, port, http_path, netns, lambda: timeout)


async def _attempt(host: str, port: int, http_path: str | None, netns: str | None,
                   budget: Callable[[], float]) -> str | None:
    attempt = budget()
    try:
        # A namespace's socket is made before the clock starts: a slow fork on a busy host is
        # our delay, not the workload's, and must not read as "no answer".
        sock = await _netns_socket(netns) if netns is not None else None
        attempt = budget()
        async with asyncio.timeout(attempt):
            await _probe(host, port, http_path, sock)
        return None
    except TimeoutError:
        return f"no answer within {attempt:.1f}s"
    except ConnectionRefusedError:
        return "connection refused"
    except _Unhealthy as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)


async def _probe(host: str, port: int, http_path: str | None, sock: socket.socket | None) -> None:
    reader, writer = await _connect(host, port, sock)
    try:
        if http_path is None:
            return
        request = f"GET {http_path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: gantry-health\r\n\r\n"
        writer.write(request.encode("latin-1"))
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise _Unhealthy("connection closed before an HTTP status line") from exc
        except asyncio.LimitOverrunError as exc:
            raise _Unhealthy("no HTTP status line in the answer") from exc
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise _Unhealthy(f"not an HTTP answer: {line[:80]!r}")
        status = int(parts[1])
        if status >= 500:
            raise _Unhealthy(f"HTTP {status} from GET {http_path}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass  # reset by a peer that already gave its answer: the answer is what counted


async def _connect(
    host: str, port: int, sock: socket.socket | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if sock is None:
        return await asyncio.open_connection(host, port, limit=_MAX_STATUS_LINE)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=_MAX_STATUS_LINE)


async def _netns_socket(netns: str) -> socket.socket:
    # A socket belongs to the namespace it was created in; pyroute2 creates it in a forked
    # child that entered the namespace and hands the descriptor back (blocking: a thread).
    sock = await asyncio.to_thread(create_socket, netns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    sock.setblocking(False)
    return sock
