"""The event fan-out: every subscriber sees every later event, in order, and a closed stream
stops receiving."""

from __future__ import annotations

import asyncio

from nodes.agent.events import EventHub, RuntimeEvent


async def test_subscribers_get_later_events_in_order_and_closed_streams_stop():
    hub = EventHub()
    hub.emit(RuntimeEvent("vm", "pulling", 1.0))  # before anyone listens: nobody gets it
    queue = hub.subscribe()
    stream = hub.stream()
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the stream subscribes when first awaited
    hub.emit(RuntimeEvent("vm", "booting", 2.0))
    hub.emit(RuntimeEvent("vm", "failed", 3.0, reason="boom", exit_code=1))

    assert (await first).state == "booting"
    assert (await anext(stream)).to_dict() == {"name": "vm", "state": "failed", "ts": 3.0, "reason": "boom", "exit_code": 1}
    assert [queue.get_nowait().state for _ in range(2)] == ["booting", "failed"]

    await stream.aclose()
    hub.emit(RuntimeEvent("vm", "stopped", 4.0))
    assert queue.get_nowait().state == "stopped" and len(hub._queues) == 1
