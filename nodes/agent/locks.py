"""One lock per VM name, held across processes: an asyncio.Lock for this process's tasks and an
flock on `<data_dir>/locks/<name>.lock` for other processes (a second CLI, the future daemon).

Lock files live outside the VM dir so that the lock exists before the dir does: recovery in
another process must never mistake a VM that is being created right now for a crash leftover.
The kernel drops an flock with its holder, so a SIGKILLed holder never leaves a VM locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import AsyncIterator


class VmLocks:
    def __init__(self, directory: Path, *, poll_interval: float = 0.05):
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: set[str] = set()

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.lock"

    def held(self, name: str) -> bool:
        return name in self._held

    def _try(self, name: str) -> int | None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            # Polled, not a blocking flock in a thread: a cancelled waiter must not leave a
            # thread behind that later takes the lock for nobody.
            while (fd := await asyncio.to_thread(self._try, name)) is None:
                await asyncio.sleep(self.poll_interval)
            self._held.add(name)
            try:
                yield
            finally:
                self._held.discard(name)
                os.close(fd)
