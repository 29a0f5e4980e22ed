"""A minimal asyncio QMP client: connect, negotiate, run a command, read its answer.

QMP is line-delimited JSON over the VM's unix socket. Asynchronous events (SHUTDOWN, POWERDOWN,
...) may arrive between a command and its answer; they are collected in `events`, not
mistaken for the reply.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from nodes.agent.errors import AgentError


class QmpError(AgentError):
    pass


class Qmp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, socket: Path, *, timeout: float = 5.0) -> Qmp:
        # sun_path holds 107 bytes; a deep data dir (a test's tmp_path) can exceed that, so the
        # socket is reached through a directory fd, the way QEMU creates it (relative to its cwd).
        dir_fd = await asyncio.to_thread(os.open, socket.parent, os.O_PATH) if len(bytes(socket)) > 100 else None
        path = f"/proc/self/fd/{dir_fd}/{socket.name}" if dir_fd is not None else str(socket)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise QmpError(f"cannot connect to QMP socket {socket}: {e}") from e
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        qmp = cls(reader, writer)
        try:
            greeting = await asyncio.wait_for(qmp._read(), timeout)
            if "QMP" not in greeting:
                raise QmpError(f"unexpected QMP greeting: {greeting}")
            await qmp.execute("qmp_capabilities", timeout=timeout)
        except BaseException as e:
            await qmp.close()
            if isinstance(e, (OSError, ValueError)):
                raise QmpError(f"QMP handshake on {socket} failed: {e}") from e
            raise
        return qmp

    async def _read(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
            if not line:
                raise QmpError("QMP connection closed")
            return json.loads(line)
        except (OSError, ValueError) as e:
            raise QmpError(f"QMP connection failed: {e}") from e

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 5.0) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._writer.write(json.dumps(msg).encode() + b"\n")
            await self._writer.drain()
        except OSError as e:
            raise QmpError(f"QMP {command}: {e}") from e

        async def reply() -> Any:
            while True:
                answer = await self._read()
                if "event" in answer:
                    self.events.append(answer)
                elif "error" in answer:
                    raise QmpError(f"QMP {command}: {answer['error'].get('desc', answer['error'])}")
                elif "return" in answer:
                    return answer["return"]

        try:
            return await asyncio.wait_for(reply(), timeout)
        except asyncio.TimeoutError as e:
            raise QmpError(f"QMP {command}: no answer within {timeout}s") from e

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> Qmp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def command(socket: Path, name: str, arguments: dict[str, Any] | None = None, *, timeout: float = 5.0) -> Any:
    """Connect, run one command, disconnect: what the agent needs for powerdown and status."""
    async with await Qmp.connect(socket, timeout=timeout) as qmp:
        return await qmp.execute(name, arguments, timeout=timeout)
