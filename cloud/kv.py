"""The plane's own counters in Redis (sign-in throttles, log caps) share one client per process
and Redis URL: a client holds a connection pool, and one made per request would open a new
connection each time. Short timeouts, because every caller treats an unanswering Redis as
"count nothing" rather than hold a request or an agent's batch."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def shared_redis(url: str | None = None) -> redis.Redis:
    url = url or settings.REDIS_URL
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return client
