"""The plane's processes on one machine (daphne for HTTP and WebSocket, a Celery worker with
beat), started, waited for and stopped the one way: tests/e2e proves this stack and bench/
times it, so both start it from here (bench/ imports tests/, never the other way round).

No Django: a caller that needs the database sets Django up itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, *, timeout: float, what: str, interval: float = 0.25):
    """`check()`'s first true value, polled every `interval`; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def database_url(db: dict) -> str:
    """The DATABASE_URL of Django's `connection.settings_dict` (the test database, in a test)."""
    return (f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
            f"{db['NAME']}")


def daphne_argv(port: int) -> list[str]:
    return [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "cloud.asgi:application"]


def worker_argv(queue: str, schedule: Path) -> list[str]:
    """A Celery worker with beat, on its own queue (so runs side by side never share tasks)."""
    return [str(BIN / "celery"), "-A", "cloud", "worker", "-B", "--concurrency", "2", "-Q", queue,
            "--schedule", str(schedule), "--loglevel", "INFO"]


def answers_healthz(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Procs:
    """Processes of this run, each in a session of its own (its log in `logs/<name>.log`),
    stopped as a group."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path):
        self.logs, self.env, self.cwd = logs, env, cwd
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "a")
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, *names: str) -> None:
        """SIGTERM, then SIGKILL after 15 s, to each named process group (all if none named)."""
        procs = [p for name, p in self.procs.items() if not names or name in names]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
