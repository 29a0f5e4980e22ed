"""The agent's one WebSocket to the control plane: connect, hello, serve, reconnect forever.

Every (re)connect starts from scratch, level-triggered: the first frame is `hello` (built fresh
by the daemon: inventory and the replicas the runtime really has), then the plane's `desired`.
Anything queued for an earlier connection is dropped at connect, because the new hello already
says the same thing more recently, and a stale `replica.status` sent after it would overwrite a
newer state. While no connection is up, `send()` drops for the same reason.

Reconnects use exponential backoff with full jitter (a fleet that lost the plane does not
return in lockstep), capped; the backoff starts over after a connection that got its `desired`.
A credential the plane refuses at the handshake (401/403: revoked, or the node was deleted) is
retried at the cap: an operator may re-enable it, and a daemon that exits would need a human.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from protocol import wire as protocol
from nodes.agent.join import Credential, agent_ws_url
from protocol.wire import Desired, Error, Heartbeat, Hello, Message, ProtocolError

log = logging.getLogger(__name__)

OUTBOX_SIZE = 256
# Frames up to twice the protocol's limit are read and refused by decode() with a log line;
# beyond that websockets closes the connection rather than buffer them.
MAX_READ_BYTES = 2 * protocol.MAX_FRAME_BYTES
MIN_HEARTBEAT_S = 0.5
MAX_HEARTBEAT_S = 60.0


class AgentClient:
    def __init__(
        self,
        credential: Credential,
        *,
        hello: Callable[[], Awaitable[Hello]],
        heartbeat: Callable[[], Awaitable[Heartbeat]],
        on_message: Callable[[Message], Awaitable[None]],
        on_disconnect: Callable[[], None] = lambda: None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        open_timeout_s: float = 10.0,
        outbox_size: int = OUTBOX_SIZE,
        rng: Callable[[], float] = random.random,
    ):
        self.url = agent_ws_url(credential.url)
        self._headers = {"Authorization": f"Bearer {credential.credential}"}
        self._hello = hello
        self._heartbeat = heartbeat
        self._on_message = on_message
        self._on_disconnect = on_disconnect
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.open_timeout_s = open_timeout_s
        self._rng = rng
        self._outbox: asyncio.Queue[Message | str] = asyncio.Queue(outbox_size)
        self._connected = False
        self.heartbeat_interval_s = protocol.HEARTBEAT_INTERVAL_S
        self._interval_changed = asyncio.Event()
        self.connections = 0  # sessions that got as far as sending hello (tests and logs read it)

    @property
    def connected(self) -> bool:
        return self._connected

    async def send(self, message: Message | str) -> bool:
        """Queue a frame for the current connection; waits while the outbox is full (a slow
        plane slows the sender). False, and nothing queued, while disconnected. A str is a frame
        its sender encoded itself (the shipper's log batches, joined from their records)."""
        if not self._connected:
            return False
        await self._outbox.put(message)
        return True

    def backoff(self, attempt: int) -> float:
        return self._rng() * min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)

    async def run(self) -> None:
        """Forever; cancel it to stop."""
        attempt = 0
        while True:
            delay = None
            try:
                async with connect(self.url, additional_headers=self._headers, max_size=MAX_READ_BYTES,
                                   open_timeout=self.open_timeout_s) as ws:
                    if await self._session(ws):
                        attempt = 0
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    log.error("control plane refused this node's credential (HTTP %d): revoked or node deleted? "
                              "retrying in %gs; join again with a new token to replace it", status, self.backoff_cap_s)
                    delay = self.backoff_cap_s
                else:
                    log.warning("control plane at %s answered the handshake with HTTP %d", self.url, status)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.warning("cannot reach the control plane at %s: %s", self.url, exc or type(exc).__name__)
            except ConnectionClosed as exc:
                log.warning("connection to the control plane closed: %s", exc)
            except Exception:  # e.g. building hello failed: this session is lost, the daemon is not
                log.exception("session with the control plane failed")
            finally:
                self._disconnect()
            if delay is None:
                delay = self.backoff(attempt)
                attempt += 1
            log.info("reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> bool:
        """One connection, until it closes; True if it was healthy (the plane sent `desired`)."""
        self._clear_outbox()
        self._connected = True
        # Straight onto the socket, not through the outbox: hello must be the first frame, and
        # whatever is queued while it is built is newer than the snapshot in it.
        await ws.send(protocol.encode(await self._hello()))
        self.connections += 1
        log.info("connected to %s; hello sent", self.url)
        healthy = False
        tasks = [asyncio.create_task(self._write(ws), name="agent-writer"),
                 asyncio.create_task(self._beat(), name="agent-heartbeat")]
        try:
            async for frame in ws:
                try:
                    message = protocol.decode(frame, allowed=protocol.PLANE_MESSAGES)
                except ProtocolError as exc:
                    log.warning("refused a frame from the control plane: %s", exc)
                    continue
                if isinstance(message, Error):
                    log.warning("control plane refused our %s: %s", message.refused_type or "frame", message.message)
                    continue
                if isinstance(message, Desired):
                    interval = min(max(message.heartbeat_interval_s, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)
                    if interval != self.heartbeat_interval_s:
                        self.heartbeat_interval_s = interval
                        self._interval_changed.set()
                    healthy = True
                try:
                    await self._on_message(message)
                except Exception:  # one message handled badly must not take the node offline
                    log.exception("handling %s failed", message.type)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._disconnect()  # now, not after the closing handshake: nothing more is for this socket
        log.warning("control plane closed the connection (code %s)", ws.close_code)
        return healthy

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            message = await self._outbox.get()
            try:
                frame = message if isinstance(message, str) else protocol.encode(message)
            except ProtocolError as exc:  # a bug on our side; one lost frame, not a lost connection
                log.error("dropped an outgoing %s: %s", message.type, exc)
                continue
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return  # the reader sees the close and ends the session

    async def _beat(self) -> None:
        while True:
            self._interval_changed.clear()
            try:
                # A new interval from `desired` takes effect now, not after the old one ran out.
                await asyncio.wait_for(self._interval_changed.wait(), self.heartbeat_interval_s)
                continue
            except TimeoutError:
                pass
            await self.send(await self._heartbeat())

    def _clear_outbox(self) -> None:
        while True:
            try:
                self._outbox.get_nowait()
            except asyncio.QueueEmpty:
                return

    def _disconnect(self) -> None:
        was = self._connected
        self._connected = False
        # Wakes any sender blocked on a full outbox; what it then queues is dropped at connect.
        self._clear_outbox()
        if was:
            try:
                self._on_disconnect()
            except Exception:
                log.exception("disconnect handler failed")
