"""One channel-layer subscription per deployment per process, shared by its live log tails.

With a channel per tail, channels-redis copies every batch (up to a couple of thousand lines)
into Redis once per subscriber, and the process reads and unpacks each copy again: ten people
following one chatty deployment cost ten times the Redis traffic and ten unpackings of the same
message. Here the process's first tail of a deployment makes one channel and joins the
deployment's group with it; every later tail in the process shares it, and a batch is received
and unpacked once, then handed to each tail in turn, in order.

A relay only hints, like the messages it relays (feeds.py): a tail that was not handed a batch
notices the hole in the chain (`prev`) or its periodic look at the head, and reads PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# channels-redis forgets a group's members after a day (group_expiry): rejoin well before.
REJOIN_S = 3600.0
RETRY_S = 1.0  # the channel layer failed to receive (Redis away): try again after this


class Tail(Protocol):
    async def logs_batch(self, message: dict) -> None: ...


class _Relay:
    def __init__(self, group: str):
        self.group = group
        self.layer = get_channel_layer()
        self.tails: dict[int, Tail] = {}  # by id(): insertion order is the order tails are served
        self.channel: str | None = None
        self.ready: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        # The default prefix: channels-redis receives every "specific" channel of the process
        # through one list, and a channel of another prefix would wait behind that receive.
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self._tasks = [asyncio.create_task(self._receive(), name=f"relay-{self.group}"),
                       asyncio.create_task(self._rejoin(), name=f"relay-rejoin-{self.group}")]

    async def stop(self) -> None:
        if self.ready is not None:
            await asyncio.gather(self.ready, return_exceptions=True)  # let a start finish first
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channel is not None:
            try:
                await self.layer.group_discard(self.group, self.channel)
            except Exception:  # noqa: BLE001 - Redis away: the membership expires on its own
                log.warning("could not leave %s", self.group, exc_info=True)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the tails fall back to PostgreSQL meanwhile
                log.warning("relay of %s could not receive; retrying", self.group, exc_info=True)
                await asyncio.sleep(RETRY_S)
                await self._join()  # Redis may have restarted empty: without this, silence for an hour
                continue
            if message.get("type") != "logs.batch":
                continue
            for tail in list(self.tails.values()):
                try:
                    await tail.logs_batch(message)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one broken tail must not starve the others
                    log.exception("a log tail of %s failed on a live batch", self.group)

    async def _rejoin(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_S)
            await self._join()

    async def _join(self) -> None:
        try:
            await self.layer.group_add(self.group, self.channel)
        except Exception:  # noqa: BLE001 - the next failure or the next hour tries again
            log.warning("relay of %s could not rejoin its group", self.group, exc_info=True)


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Relay]] = weakref.WeakKeyDictionary()


async def subscribe(group: str, tail: Tail) -> None:
    """Hand `tail` the group's batches from now on. Returns once the process's channel is in
    the group, so a batch committed after this returns reaches the tail (join, then read the
    head: consumers.py)."""
    relays = _relays.setdefault(asyncio.get_running_loop(), {})
    relay = relays.get(group)
    if relay is None:
        relay = relays[group] = _Relay(group)
        relay.ready = asyncio.ensure_future(relay.start())
    relay.tails[id(tail)] = tail
    try:
        await asyncio.shield(relay.ready)
    except Exception:
        relay.tails.pop(id(tail), None)
        if relays.get(group) is relay:
            del relays[group]  # the next tail tries afresh
        raise


async def unsubscribe(group: str, tail: Tail) -> None:
    relays = _relays.get(asyncio.get_running_loop(), {})
    relay = relays.get(group)
    if relay is None or relay.tails.pop(id(tail), None) is None:
        return
    if not relay.tails:
        del relays[group]
        await relay.stop()


def subscribers(group: str) -> int:
    """How many tails of this event loop follow the group (for tests and diagnostics)."""
    relay = _relays.get(asyncio.get_running_loop(), {}).get(group)
    return len(relay.tails) if relay is not None else 0
