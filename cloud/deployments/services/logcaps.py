"""How many log lines a tenant may store: LOG_LINES_PER_SECOND_PER_TENANT and
LOG_LINES_PER_DAY_PER_TENANT, all its replicas on every node together, so that one tenant's
workload cannot fill the database every tenant shares.

Counted in Redis, shared by every daphne process: one counter per tenant per second and one per
UTC day, both raised by a whole batch in one round trip (INCRBY, never a command per line).
A batch is counted once it is known what in it is new (resends are free), and what the counters
leave no room for is dropped by services/logs.py, which says so in a `system` line.

Redis unreachable: every line is stored (and a warning logged). Losing a customer's lines
because the counter is away would be worse than a few seconds without a cap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.cache import cache

from cloud.kv import shared_redis

log = logging.getLogger(__name__)

DAY_S = 86400
_clock = time.time  # tests set the time


@dataclass(frozen=True)
class Allowance:
    lines: int  # how many of the new lines may be stored
    cap: str = ""  # which cap stopped the rest: "10 lines per second", ...


def log_lines_allow(*, tenant_id: int, count: int, now: float | None = None) -> Allowance:
    """Count `count` new lines of one of the tenant's replicas against its caps; how many of them
    fit. Lines that do not fit are counted too: a tenant over its cap stays over it until the
    second (or day) turns, whatever it keeps sending."""
    per_second = settings.LOG_LINES_PER_SECOND_PER_TENANT
    per_day = settings.LOG_LINES_PER_DAY_PER_TENANT
    if count <= 0 or (per_second <= 0 and per_day <= 0):
        return Allowance(count)
    second = int(_clock() if now is None else now)
    caps = []  # (key, limit, ttl, what)
    if per_second > 0:
        caps.append((cache.make_key(f"logcap:{tenant_id}:s:{second}"), per_second, 5,
                     f"{per_second} lines per second"))
    if per_day > 0:
        caps.append((cache.make_key(f"logcap:{tenant_id}:d:{second // DAY_S}"), per_day, 2 * DAY_S,
                     f"{per_day} lines per day (UTC)"))
    try:
        pipe = shared_redis().pipeline(transaction=False)
        for key, _limit, ttl, _what in caps:
            pipe.incrby(key, count)
            pipe.expire(key, ttl)
        totals = pipe.execute()[::2]
    except redis.RedisError:
        log.warning("log caps not counted (Redis unreachable): storing every line", exc_info=True)
        return Allowance(count)
    allowed, cap = count, ""
    for (_key, limit, _ttl, what), total in zip(caps, totals):
        room = max(0, min(count, limit - (int(total) - count)))
        if room < allowed:
            allowed, cap = room, what
    return Allowance(allowed, cap)
