"""`volume.delete` as the daemon keeps it: erased at once if no VM uses the volume, else kept
until one does not, and retried before every heartbeat (the plane learns the erase is done from
the first heartbeat that no longer lists the volume).

A request outlives the daemon: each is a marker file (`<dir>/<volume_id>`) until its volume is
erased, so a SIGKILLed agent's successor erases what the plane asked for even if the plane does
not ask again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodes.agent.errors import AgentError
from protocol.wire import VOLUME_ID_RE

log = logging.getLogger(__name__)


class PendingDeletes:
    """`erase(volume_id)`: MicroVmRuntime.delete_volume (True: gone; False: still in use)."""

    def __init__(self, directory: Path, erase: Callable[[str], Awaitable[bool]]):
        self.directory = Path(directory)
        self._erase = erase
        self._lock = asyncio.Lock()

    async def request(self, volume_id: str) -> bool:
        """Remembered, then tried at once; True if the volume is gone now."""
        if not VOLUME_ID_RE.fullmatch(volume_id):
            raise AgentError(f"invalid volume id {volume_id[:80]!r}", permanent=True)
        await asyncio.to_thread(self._mark, volume_id)
        return volume_id not in await self.retry(only=volume_id)

    async def pending(self) -> list[str]:
        return await asyncio.to_thread(self._marked)

    async def retry(self, only: str | None = None) -> list[str]:
        """Tries every request still pending (or just `only`); returns those still waiting."""
        async with self._lock:
            waiting = []
            for volume_id in await asyncio.to_thread(self._marked):
                if only is not None and volume_id != only:
                    waiting.append(volume_id)
                    continue
                try:
                    gone = await self._erase(volume_id)
                except (AgentError, OSError) as exc:
                    log.warning("erasing volume %s failed (retried with the next heartbeat): %s", volume_id, exc)
                    gone = False
                if gone:
                    await asyncio.to_thread((self.directory / volume_id).unlink, missing_ok=True)
                else:
                    waiting.append(volume_id)
            return waiting

    def _mark(self, volume_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / volume_id, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)

    def _marked(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if VOLUME_ID_RE.fullmatch(n))
        except FileNotFoundError:
            return []
