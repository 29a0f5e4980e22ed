"""Runtime events and their fan-out to subscribers (the CLI's progress lines, the agent's
WebSocket to come, the bench's phase timings)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator


@dataclass(frozen=True)
class RuntimeEvent:
    """A state change: pulling (with bytes), booting, starting, running, restarting(exit code),
    stopping, stopped, failed(reason); or, with phase "health", a `starting` VM whose health
    check keeps failing, or a `running` one whose health check has failed often enough to
    take it out of service (the reason says how). A `running` event without that phase, after
    one with it, says the check passes again."""

    name: str
    state: str
    ts: float
    reason: str = ""
    exit_code: int | None = None
    phase: str | None = None
    done_bytes: int | None = None
    total_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class EventHub:
    """Every subscriber gets every event emitted after it subscribed, in order."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue] = set()

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues.add(queue)
        return queue

    async def stream(self) -> AsyncIterator[RuntimeEvent]:
        queue = self.subscribe()
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    def emit(self, event: RuntimeEvent) -> None:
        for queue in self._queues:
            queue.put_nowait(event)
