"""Reading a VM's log out of its files: the follower the shipper and `vm logs` use, the heads a
heartbeat reports, and trimming what the plane has stored. A part of MicroVmRuntime, kept
apart because it only reads the VM dir and the runtime's conversion signals."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable, TypeVar

from nodes.agent.errors import AgentError
from nodes.agent.logs import LogLine, LogReader, LogRecords, trim
from protocol.vocabulary import VM_ENDED_STATES

# How much of logs.jsonl one read of a follower takes: about one log frame's worth, so a
# shipper catching up on a backlog holds a few thousand lines at a time, not a file.
LOG_CHUNK_BYTES = 256 * 1024

T = TypeVar("T")


class VmLogReads:
    """Needs of its host class: `store`, `poll_interval`, `_current()`, `_converted` (an
    asyncio.Event per VM, set by the watcher when a conversion found lines) and `_log_heads`."""

    async def logs(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogLine]:
        async for chunk in self.log_chunks(name, after_seq, follow):
            for line in chunk:
                yield line

    def log_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[list[LogLine]]:
        """The VM's log lines after `after_seq`, as the reads of logs.jsonl return them (never
        empty); with `follow`, until the VM has ended."""
        return self._follow(name, after_seq, follow, LogReader.read_new)

    def log_record_chunks(self, name: str, after_seq: int = 0, follow: bool = False) -> AsyncIterator[LogRecords]:
        """As log_chunks, but the records' bytes as logs.jsonl holds them, none decoded: what the
        shipper sends on as they are."""
        return self._follow(name, after_seq, follow, LogReader.read_records)

    async def _follow(self, name: str, after_seq: int, follow: bool,
                      read: Callable[[LogReader, int], T | None]) -> AsyncIterator[T]:
        paths = self.store.paths(name)
        if not await asyncio.to_thread(paths.dir.is_dir):
            raise AgentError(f"no VM named {name}", permanent=True)
        reader = LogReader(paths, after_seq)
        while True:
            converted = self._converted.setdefault(name, asyncio.Event())
            info = await self._current(name)
            if chunk := await asyncio.to_thread(read, reader, LOG_CHUNK_BYTES):
                yield chunk
            if not follow or info is None or info.state in VM_ENDED_STATES:
                while rest := await asyncio.to_thread(read, reader, LOG_CHUNK_BYTES):
                    yield rest
                return
            # Woken by the watcher's next conversion that found lines (a follower then reads
            # them at once, not up to a poll later); the timeout covers other writers.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(converted.wait(), self.poll_interval)

    def log_heads(self) -> dict[str, int]:
        """The last seq in each known VM's log (what a heartbeat tells the plane)."""
        return dict(self._log_heads)

    async def trim_logs(self, name: str, upto_seq: int) -> int:
        """The plane has stored every line up to `upto_seq`: give their disk back (logs.trim);
        returns about how many bytes. A VM removed meanwhile has nothing left to trim."""
        paths = self.store.paths(name)
        if not await asyncio.to_thread(paths.dir.is_dir):
            return 0
        return await asyncio.to_thread(trim, paths, upto_seq)
