"""Limits at the plane's front doors, counted in the shared Redis so every web process agrees.

Two kinds:

- `throttled(scope)`: a window on POSTs per client address, for forms where every POST costs us
  (signup, password reset mail, confirmation mail). A form page (GET) is never limited.

- `guarded(door)`: guessing at the doors that check a secret (`/o/token/`, `/o/revoke_token/`,
  `/o/introspect/`, `/o/authorize/`, login). Only failures count, so a busy client with the
  right secret is never slowed:
  * per client address (accounts/clientip.py), at most ACCOUNT_THROTTLE[0] failures in any
    ACCOUNT_THROTTLE[1] seconds (20 in 5 minutes), then a 429 with Retry-After until the oldest
    failure leaves the window;
  * per target (the account's username, or the OAuth2 client_id when a client secret is sent),
    from addresses that have not succeeded for that target before: a few free failures, then
    each further failure makes the
    next attempt wait twice as long as the last (1 s, 2 s, 4 s, ... up to a cap). Guessing from
    many addresses is slowed without a lockout: the cap bounds the wait, and addresses the
    account or client already used keep working whatever a stranger does;
  * an address the target succeeded from counts that target's failures in a window of its own
    (same limit), so strangers' failures at the same address never throttle it.
  An attempt is counted as a failure when it starts and forgiven when it succeeds, so a burst of
  parallel guesses cannot all slip under the limit before the first is answered. A delay is
  always an immediate 429, never a request held open.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
import time
from functools import lru_cache, wraps
from urllib.parse import unquote_plus, urlsplit

import redis
from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse
from django.shortcuts import render

from accounts.clientip import client_ip
from cloud.kv import shared_redis

logger = logging.getLogger(__name__)

# An address that succeeded for a target is its own for this long: its attempts skip the
# target's delay (a CI runner's client keeps working while strangers guess its secret).
KNOWN_ADDRESS_S = 30 * 24 * 3600


def now() -> float:
    """The clock the guard reads (a function, so tests can move time without sleeping)."""
    return time.time()


def throttled(scope: str):
    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "POST":
                limit, window = settings.ACCOUNT_THROTTLE
                key = f"throttle:{scope}:{client_ip(request)}"
                cache.add(key, 0, timeout=window)
                try:
                    count = cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, timeout=window)
                    count = 1
                if count > limit:
                    response = render(request, "accounts/throttled.html", {"window": window}, status=429)
                    response["Retry-After"] = str(window)
                    return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


# -- guessing at the doors ----------------------------------------------------------------------

# One round trip, atomic: prune the address's window, refuse if it is full or the target is
# waiting, else count this attempt as a failure in advance. Returns {0|1|2, seconds}: 0 go
# ahead, 1 the address is over its limit, 2 the target is waiting. Numbers travel as strings
# (Redis turns a Lua float reply into an integer).
_CLAIM = """
local ipkey, tkey = KEYS[1], KEYS[2]
local t, window, limit, member = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local use_target, free, maxdelay, twindow = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', ipkey, '-inf', t - window)
if redis.call('ZCARD', ipkey) >= limit then
  local oldest = redis.call('ZRANGE', ipkey, 0, 0, 'WITHSCORES')
  return {1, tostring(tonumber(oldest[2]) + window - t)}
end
if use_target then
  local nxt = tonumber(redis.call('HGET', tkey, 'next') or '0')
  if t < nxt then
    return {2, tostring(nxt - t)}
  end
  local fails = redis.call('HINCRBY', tkey, 'fails', 1)
  if fails > free then
    redis.call('HSET', tkey, 'next', tostring(t + math.min(maxdelay, 2 ^ (fails - free - 1))))
  end
  redis.call('EXPIRE', tkey, twindow)
end
redis.call('ZADD', ipkey, t, member)
redis.call('EXPIRE', ipkey, math.ceil(window) + 1)
return {0, '0'}
"""

# A success forgives its advance count (never below zero) and makes the address known.
_FORGIVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' and tonumber(redis.call('HGET', KEYS[2], 'fails') or '0') > 0 then
  redis.call('HINCRBY', KEYS[2], 'fails', -1)
end
if KEYS[3] ~= '' then
  redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[3]))
end
return 0
"""


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return shared_redis(url)


def _key(*parts: str) -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "") or "gantry"
    return ":".join([prefix, "guard", *parts])


def _digest(target: str) -> str:
    return hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class Attempt:
    """One guarded request: `refused` is (reason, seconds) when it may not be tried now."""

    def __init__(self, *, ip: str, target: str | None):
        self.ip, self.target = ip, target
        self.member = secrets.token_hex(8)
        self.ip_key = _key("ip", ip)
        self.target_key = _key("t", _digest(target)) if target else ""
        self.known_key = _key("k", _digest(target), ip) if target else ""
        self.use_target = False
        self.claimed = False
        self.refused: tuple[str, float] | None = None

    def claim(self) -> None:
        limit, window = settings.ACCOUNT_THROTTLE
        free, max_delay, target_window = settings.ACCOUNT_GUESS_DELAY
        client = _redis(settings.REDIS_URL)
        if self.target and client.exists(self.known_key):
            # The account or client has succeeded from this address: its attempts here skip the
            # target's delay and count in a window of their own, so guesses at other targets
            # from the same address (a shared NAT, a CI runner) never throttle it. Guesses at it
            # from here are still capped by that window.
            self.ip_key = _key("ip", self.ip, "k", _digest(self.target))
        else:
            self.use_target = bool(self.target)
        code, seconds = client.eval(
            _CLAIM, 2, self.ip_key, self.target_key or self.ip_key + ":none",
            repr(now()), window, limit, self.member, "1" if self.use_target else "0", free, max_delay, target_window)
        if int(code) == 0:
            self.claimed = True
        else:
            self.refused = ("address" if int(code) == 1 else "target", float(seconds))

    def succeeded(self) -> None:
        if not self.claimed:
            return
        _redis(settings.REDIS_URL).eval(
            _FORGIVE, 3, self.ip_key, self.target_key or self.ip_key + ":none", self.known_key,
            self.member, "1" if self.use_target else "0", KNOWN_ADDRESS_S)


def _basic_client_id(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=False).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote_plus(decoded.split(":", 1)[0]) or None


def _target(door: str, request) -> str | None:
    """Whose secret this attempt guesses at, or None (then only the address counts).

    A client is a target only when the request presents a client secret. /o/authorize/ checks
    none (the browser's session is the credential), and a public client (the CLI) has none: its
    client_id is published, so counting against it would let anyone make every new user of it
    wait, which is the lockout-by-strangers the per-target delay must never be."""
    if door == "login":
        username = request.POST.get("username", "").strip().lower()
        return f"user:{username[:254]}" if username else None
    if door == "authorize":
        return None
    client_id = _basic_client_id(request)
    if client_id is None and request.POST.get("client_secret"):
        client_id = request.POST.get("client_id")
    return f"client:{client_id[:200]}" if client_id else None


def _failed(door: str, response) -> bool:
    if door == "login":
        return response.status_code != 302  # Django's LoginView redirects only on success
    if door == "authorize":
        if response.status_code >= 400:
            return True
        location = response.get("Location", "") if 300 <= response.status_code < 400 else ""
        parts = urlsplit(location)
        said = parts.query + "&" + parts.fragment
        # A user who clicks "deny" (access_denied) made a choice, not a guess.
        return "error=" in said and "error=access_denied" not in said
    return not 200 <= response.status_code < 300


def _refusal(door: str, request, seconds: float):
    wait = max(1, math.ceil(seconds))
    if door in {"login", "authorize"}:
        response = render(request, "accounts/throttled.html", {"window": wait}, status=429)
    else:
        response = JsonResponse({"error": "slow_down",
                                 "error_description": f"Too many failed attempts; try again in {wait} s."}, status=429)
    response["Retry-After"] = str(wait)
    response["Cache-Control"] = "no-store"
    return response


def guarded(door: str):
    """`door`: "token" (token, revoke, introspect: JSON answers), "authorize" or "login"."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if door == "login" and request.method != "POST":
                return view(request, *args, **kwargs)  # the form itself checks nothing
            attempt = Attempt(ip=client_ip(request), target=_target(door, request))
            try:
                attempt.claim()
            except redis.RedisError:
                # Redis is down: the plane is degraded anyway; answer rather than fail closed
                # and log, so an operator sees the throttle is off.
                logger.error("front-door throttle unavailable (Redis error); %s not limited", door, exc_info=True)
                return view(request, *args, **kwargs)
            if attempt.refused is not None:
                return _refusal(door, request, attempt.refused[1])
            response = view(request, *args, **kwargs)
            if not _failed(door, response):
                try:
                    attempt.succeeded()
                except redis.RedisError:
                    logger.error("front-door throttle could not forgive a success", exc_info=True)
            return response

        return wrapper

    return decorate
