"""Per-route request counts from HAProxy's own log lines, minute by minute, for the last hour.

HAProxy sends one datagram per request to a unix socket the gateway owns (`log <path> format
raw`, log-format `"<label> <status> <Ta>"`, see haproxy_config.LOG_FORMAT), from every worker,
old ones draining after a reload included. The reader keeps, per route label and minute:
requests, 5xx answers and a histogram of %Ta (the request's total active time in ms).
Memory only: a restarted gateway starts empty, and the plane's view is the sum over its gateways.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gateway.table import LABEL

WINDOW_MINUTES = 60
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
INF = "inf"
_LINE = re.compile(r"(\S+) (-?\d{1,4}) (-?\d{1,12})\n?")


@dataclass
class Minute:
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))


def bucket(ms: int) -> int:
    """Index of the first upper bound >= ms; the last index is "inf"."""
    for index, bound in enumerate(BUCKETS_MS):
        if ms <= bound:
            return index
    return len(BUCKETS_MS)


class Stats:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._minutes: dict[tuple[str, int], Minute] = {}

    def record(self, label: str, status: int, total_ms: int) -> None:
        minute = int(self._clock() // 60)
        with self._lock:
            entry = self._minutes.setdefault((label, minute), Minute())
            entry.requests += 1
            if 500 <= status <= 599:
                entry.errors += 1
            # %Ta is -1 for a request that never completed (the client left): counted, not timed.
            if total_ms >= 0:
                entry.latency[bucket(total_ms)] += 1
            self._forget(minute)

    def record_line(self, line: str) -> bool:
        """One log line as HAProxy sends it; False (and nothing counted) for anything else, such as
        a request no route took (label `-`)."""
        match = _LINE.fullmatch(line)
        if match is None or not LABEL.fullmatch(match.group(1)):
            return False
        self.record(match.group(1), int(match.group(2)), int(match.group(3)))
        return True

    def _forget(self, now_minute: int) -> None:
        for key in [key for key in self._minutes if key[1] <= now_minute - WINDOW_MINUTES]:
            del self._minutes[key]

    def minutes(self) -> list[dict]:
        """The `GET /v1/stats` list: every (route, minute) with a request in the last 60 minutes."""
        now_minute = int(self._clock() // 60)
        with self._lock:
            self._forget(now_minute)
            items = sorted(self._minutes.items(), key=lambda item: (item[0][1], item[0][0]))
            return [
                {"label": label,
                 "minute": datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "requests": entry.requests,
                 "errors": entry.errors,
                 "latency_ms": {str(bound): entry.latency[i] for i, bound in enumerate(BUCKETS_MS)}
                 | {INF: entry.latency[-1]}}
                for (label, minute), entry in items
            ]


class LogReader:
    """The unix datagram socket HAProxy logs to, read by a daemon thread into `stats`."""

    def __init__(self, path: Path, stats: Stats):
        self.path = path
        self.stats = stats
        path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        path.chmod(0o600)
        # Bursts of short requests must not overflow the queue while the thread is descheduled.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._socket.settimeout(0.5)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haproxy-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                datagram = self._socket.recv(8192)
            except TimeoutError:
                continue
            self.stats.record_line(datagram.decode("utf-8", errors="replace"))

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._socket.close()
        self.path.unlink(missing_ok=True)
