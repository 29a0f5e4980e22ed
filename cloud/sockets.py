"""What every WebSocket route gets before its consumer (cloud/routing.py): a cap on what a
client may send, and a clean refusal, before the socket opens, of a path no route serves.

**Incoming messages are capped.** daphne has no option for it, and autobahn under it buffers a
whole message, however large, before daphne hands it on: anyone who may open a log socket
could make the process hold gigabytes. `MessageLimit` caps each route twice. Under daphne it
tells the connection's autobahn protocol to fail, with close code 1009 ("message too big"), as
soon as a frame header announces more than the limit (`_cap_frames`), so the bytes are never
read; and under any server it checks each `websocket.receive` before the consumer sees it, and
closes with 1009 instead of passing it on.

**A socket nobody serves is refused, never a 500.** Channels' URLRouter raises for a path it
has no route for, and daphne answers an application that raised during the handshake with a
500. `unknown_socket` is the routes' last entry: it refuses the handshake with a 404 where the
server offers the WebSocket Denial Response extension, and otherwise (daphne 4.2 does not
offer it) by closing before accepting, which daphne answers with a 403.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from cloud.streams import daphne_protocol

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009  # RFC 6455: a message too big to process


def _cap_frames(send, limit: int):
    """Under daphne: make the connection's autobahn protocol fail (close 1009) as soon as an
    incoming message grows past `limit`, at the frame header, before its payload is read.
    Not through autobahn's own maxMessagePayloadSize, which caps what we send as well (a
    `desired` frame to an agent, a page of log lines). Returns the protocol; None under
    another server."""
    protocol = daphne_protocol(send)
    if protocol is None or not hasattr(protocol, "onMessageFrameBegin") or not hasattr(protocol, "_fail_connection"):
        return None
    frame_begin = protocol.onMessageFrameBegin

    def onMessageFrameBegin(length: int) -> None:
        frame_begin(length)
        total = getattr(protocol, "message_data_total_length", length)
        if total > limit and not protocol.failedByMe:
            log.warning("closing a WebSocket from %s: a message of %d bytes or more (limit %d)",
                        getattr(protocol, "client_addr", "?"), total, limit)
            protocol._fail_connection(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")

    protocol.onMessageFrameBegin = onMessageFrameBegin
    # autobahn's default for a failure is to drop the TCP connection; the client should hear why.
    protocol.failByDrop = False
    return protocol


class MessageLimit:
    """ASGI middleware for a WebSocket route: no message larger than `limit()` bytes reaches the
    application; the socket is closed with 1009 instead (see the module's docstring)."""

    def __init__(self, application, limit: Callable[[], int]):
        self.application = application
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.application(scope, receive, send)
        limit = self.limit()
        protocol = _cap_frames(send, limit)
        closed = False

        async def limited_receive():
            nonlocal closed
            message = await receive()
            if message["type"] != "websocket.receive" or closed:
                return message
            text, data = message.get("text"), message.get("bytes")
            # A str's UTF-8 size is at most 4 bytes a character: count exactly only when that matters.
            size = len(data) if data is not None else len(text or "")
            if text is not None and size * 4 > limit:
                size = len(text.encode("utf-8", "surrogatepass"))
            if size <= limit:
                return message
            closed = True
            log.warning("closing a WebSocket on %s: a message of %d bytes (limit %d)",
                        scope.get("path", "?")[:200], size, limit)
            if protocol is not None:
                # autobahn lets an application close only with 1000 or 3000-4999; 1009 is the
                # protocol's own to send.
                protocol._fail_connection(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")
            else:
                await send({"type": "websocket.close", "code": CLOSE_TOO_BIG})
            # The application ends as it would for a client that went away.
            return {"type": "websocket.disconnect", "code": CLOSE_TOO_BIG}

        return await self.application(scope, limited_receive, send)


async def refuse_handshake(scope, send, *, status: int, detail: str, code: str) -> None:
    """Refuse a WebSocket before it opens, with `status` where the server can send an HTTP
    response (the WebSocket Denial Response extension), else by closing before accepting
    (daphne: a 403). The reason is logged either way; a browser shows neither."""
    path = scope.get("path", "?")[:200]
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps({"type": "about:blank", "status": status, "detail": detail, "code": code,
                           "instance": path}).encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
        log.info("refused a WebSocket to %s: %s %s", path, status, detail)
        return
    log.info("refused a WebSocket to %s: %s %s (sent as the server's refusal, 403 under daphne)",
             path, status, detail)
    await send({"type": "websocket.close"})


async def unknown_socket(scope, receive, send) -> None:
    """The last WebSocket route: a path none of the others serves is refused before it opens
    (see the module's docstring), where URLRouter would raise and daphne answer 500."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await refuse_handshake(scope, send, status=404, detail="No WebSocket is served at this path.", code="not_found")
