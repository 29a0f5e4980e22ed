"""HAProxy's runtime API: the admin socket of the current worker, one prompt-mode session at a time.

A push changes what HAProxy serves through these commands, without a reload (gateway/service.py):
`add server` / `enable server` / `set server … state drain|maint` / `shutdown sessions server` /
`del server` for the pool's servers, and `prepare map` / `add map @<ver>` / `commit map` to swap a
map file's contents atomically. Every answer is checked against the one a success gives; anything
else raises CommandError, and the caller rebuilds the config instead.

Right after a reload the old worker may still hold the socket for a moment (it is handed over to
the new one): a session checks that the worker answering is the expected one, and reconnects
until it is.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

CONNECT_TIMEOUT_S = 5
ANSWER_TIMEOUT_S = 30
_PROMPT = b"\n> "
_PAYLOAD_BYTES = 8000  # a payload must fit HAProxy's CLI buffer (tune.bufsize, 16 kB)
_PIPELINE = 200  # commands sent before their answers are read
_LINE = re.compile(r"[!-~]+( [!-~]+)*")  # printable ASCII words: nothing that ends a command early
_PID = re.compile(r"^Pid: (\d+)$", re.MULTILINE)
_VERSION = re.compile(r"New version created: (\d+)")


class CommandError(RuntimeError):
    """A runtime command HAProxy refused or answered unexpectedly (or the socket failed)."""


class AdminSession:
    """`with AdminSession(path, worker) as cli:`, then `cli.run(...)` and friends."""

    def __init__(self, path: Path, worker: int, *, timeout_s: float = CONNECT_TIMEOUT_S):
        self.path = path
        self.worker = worker
        self.timeout_s = timeout_s
        self._socket: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> AdminSession:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._connect()
                pid = _PID.search(self.run("show info"))
                if pid and int(pid.group(1)) == self.worker:
                    return self
                problem = f"the admin socket is answered by process {pid.group(1) if pid else '?'}"
            except (OSError, CommandError) as exc:
                problem = str(exc)
            self.close()
            if time.monotonic() > deadline:
                raise CommandError(f"cannot reach HAProxy worker {self.worker}: {problem}")
            time.sleep(0.02)

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connect(self) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(ANSWER_TIMEOUT_S)
        self._socket.connect(str(self.path))
        self._buffer = b""
        self._socket.sendall(b"prompt\n")
        self._read_answer()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # -- commands --------------------------------------------------------------------------------

    def run(self, command: str, payload: list[str] | None = None) -> str:
        """One command (and its payload lines), its answer without the prompt."""
        for line in [command, *(payload or [])]:
            if not _LINE.fullmatch(line):
                raise CommandError(f"refusing to send {line!r}: not one line of printable words")
        if self._socket is None:
            raise CommandError("the admin session is closed")
        text = command + "\n"
        if payload is not None:
            text = f"{command} <<\n" + "".join(line + "\n" for line in payload) + "\n"
        try:
            self._socket.sendall(text.encode())
            answer = self._read_answer()
        except OSError as exc:
            raise CommandError(f"{command}: {exc}") from None
        if payload:
            # In prompt mode HAProxy echoes a "+ " for each payload line before the answer.
            answer = answer.removeprefix("+ " * (len(payload) + 1))
        return answer.strip("\n")

    def expect(self, command: str, answer: str = "", payload: list[str] | None = None) -> None:
        got = self.run(command, payload)
        if got.strip() != answer:
            raise CommandError(f"{command!r}: HAProxy answered {got.strip()[:300]!r}")

    def run_many(self, commands: list[str]) -> list[str]:
        """Commands without payload, pipelined (HAProxy reads them one after another), their
        answers in order: thousands cost milliseconds, not a round trip each."""
        for command in commands:
            if not _LINE.fullmatch(command):
                raise CommandError(f"refusing to send {command!r}: not one line of printable words")
        if self._socket is None:
            raise CommandError("the admin session is closed")
        answers: list[str] = []
        try:
            # A batch's answers (a few dozen bytes each) fit the socket buffers while it is sent.
            for start in range(0, len(commands), _PIPELINE):
                batch = commands[start:start + _PIPELINE]
                self._socket.sendall("".join(command + "\n" for command in batch).encode())
                answers += [self._read_answer().strip("\n") for _ in batch]
        except OSError as exc:
            failed = commands[len(answers)] if len(answers) < len(commands) else "a pipelined batch"
            raise CommandError(f"{failed}: {exc}") from None
        return answers

    def expect_many(self, commands: list[tuple[str, str]]) -> None:
        """(command, the answer its success gives) pairs, pipelined; CommandError at the first other."""
        for (command, answer), got in zip(commands, self.run_many([command for command, _ in commands])):
            if got.strip() != answer:
                raise CommandError(f"{command!r}: HAProxy answered {got.strip()[:300]!r}")

    def _read_answer(self) -> str:
        """Up to the next prompt; every answer ends with a newline, then the prompt."""
        assert self._socket is not None
        while (end := self._buffer.find(_PROMPT)) < 0:
            chunk = self._socket.recv(65536)
            if not chunk:
                raise CommandError("HAProxy closed the admin socket")
            self._buffer += chunk
        answer, self._buffer = self._buffer[:end + 1], self._buffer[end + len(_PROMPT):]
        return answer.decode(errors="replace")

    # -- maps ------------------------------------------------------------------------------------

    def replace_map(self, path: str, entries: dict[str, str]) -> None:
        """The map's contents become `entries`, for every lookup at once (prepare, add, commit)."""
        prepared = _VERSION.search(self.run(f"prepare map {path}"))
        if prepared is None:
            raise CommandError(f"prepare map {path}: no new version in HAProxy's answer")
        version = prepared.group(1)
        chunk: list[str] = []
        size = 0
        for key, value in sorted(entries.items()):
            line = f"{key} {value}"
            if chunk and size + len(line) + 1 > _PAYLOAD_BYTES:
                self.expect(f"add map @{version} {path}", payload=chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            self.expect(f"add map @{version} {path}", payload=chunk)
        self.expect(f"commit map @{version} {path}")

    # -- servers ---------------------------------------------------------------------------------

    def server_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Per (backend, server): its streams (scur), queue (qcur), connections in use and idle."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for row in _table(self.run("show stat -1 4 -1"), ","):
            if row.get("pxname") and row.get("svname"):
                counts[(row["pxname"], row["svname"])] = {"scur": _int(row.get("scur")), "qcur": _int(row.get("qcur"))}
        for row in _table(self.run("show servers conn"), " "):
            key = tuple(row.get("bkname/svname", "").partition("/")[::2])
            if key in counts:
                counts[key] |= {"used_cur": _int(row.get("used_cur")), "idle_cur": _int(row.get("idle_cur"))}
        return counts

    def streams_by_server(self) -> dict[tuple[str, str], int]:
        """How many streams point at each (backend, server) now, from `show sess`. HAProxy 2.6's
        own check before deleting a server counts sessions, which misses some streams still
        pointing at it (fixed in later versions): this one does not."""
        found: dict[tuple[str, str], int] = {}
        for backend, server in re.findall(r" be=(\S+) srv=(\S+)", self.run("show sess")):
            found[(backend, server)] = found.get((backend, server), 0) + 1
        return found


def _table(text: str, separator: str) -> list[dict[str, str]]:
    """HAProxy's `# a b c` header plus rows, as dicts (CSV for `show stat`, words for the rest)."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# "):
            header = [name for name in line[2:].split(separator)]
        elif header is not None and line.strip():
            rows.append(dict(zip(header, line.split(separator) if separator != " " else line.split())))
    return rows


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
