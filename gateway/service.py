"""What the gateway serves now, and the one way to change it: apply a push.

Pushes are applied one at a time (the plane's periodic push and an on-change push can cross).
A push whose digest is the one served changes nothing and reloads nothing: the plane re-pushes
the whole table every few seconds, and only a changed table should cost a reload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from gateway.proxy import HAProxy
from gateway.stats import Stats
from gateway.table import EMPTY, Push


@dataclass(frozen=True)
class Applied:
    digest: str | None  # None: the empty table a gateway starts with, before any push
    applied_at: str | None

    def as_dict(self) -> dict:
        return {"digest": self.digest, "applied_at": self.applied_at}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Gateway:
    def __init__(self, proxy: HAProxy, stats: Stats):
        self.proxy = proxy
        self.stats = stats
        self._lock = threading.Lock()
        self._applied = Applied(digest=None, applied_at=None)

    def start(self) -> None:
        """HAProxy up with the empty table: every host 404 until the plane pushes."""
        self.proxy.start(EMPTY)

    @property
    def applied(self) -> Applied:
        return self._applied

    def push(self, push: Push) -> Applied:
        """Serve `push.table`; ProxyError leaves the previous table served and its digest reported."""
        with self._lock:
            if push.digest != self._applied.digest:
                self.proxy.apply(push.table)
                self._applied = Applied(digest=push.digest, applied_at=utc_now())
            return self._applied
