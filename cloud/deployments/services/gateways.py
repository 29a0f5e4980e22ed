"""The gateways the plane drives (issue 25): registering them, and pushing the route table.

Every gateway gets the same whole table (`routes.route_table()`), so any number of them serve
alike and a restarted one heals on the next push. A push goes out shortly after every write
that changes routes (`routes_changed()`, on commit) and every GANTRY_GATEWAY_PUSH_INTERVAL_S
from beat; a gateway already serving the table, confirmed less than a minute ago, is skipped.
A gateway's failure is recorded on its row (`last_error`, shown in system status) and never
stops the push to the next one, nor reaches the write that asked for the push.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
import redis
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from cloud.deployments.models import Gateway
from cloud.deployments.routes import route_table
from cloud.exceptions import InvalidInput
from cloud.kv import shared_redis

log = logging.getLogger(__name__)

# A deployment's columns the route table reads besides its replicas and keys, that PATCH changes.
ENDPOINT_SETTINGS = ("endpoint_access", "request_timeout_s", "max_request_body_mb")

PUSH_TASK = "deployments.push_routes"
# Writes that change routes within this window share one push, which runs when the window
# ends: each one's on-commit hook runs after its commit, so the push sees all of them.
PUSH_DEBOUNCE_S = 0.5
# An unchanged table is sent again after this long, even to a gateway that says it serves it.
RESEND_AFTER = timedelta(seconds=60)
PUSH_TIMEOUT_S = 5.0
TABLE_VERSION = 1
MAX_ERROR_LENGTH = 1000
# pg_advisory_xact_lock key: one push at a time, so an older table never lands after a newer one.
_PUSH_LOCK = 0x67617465  # "gate"

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096
MAX_URL_LENGTH = 300


# -- asking for a push ------------------------------------------------------------------------------


def routes_changed() -> None:
    """Ask for a push once this transaction commits (at most one per PUSH_DEBOUNCE_S however many
    writes ask). A broker that is away costs only latency: beat pushes the whole table anyway."""
    transaction.on_commit(_push_soon)


def _push_soon() -> None:
    key = cache.make_key("deployments:routes-push-queued")
    try:
        first = shared_redis().set(key, "1", px=int(PUSH_DEBOUNCE_S * 1000), nx=True)
    except redis.RedisError:
        first = True  # one push too many rather than none
    if not first:
        return
    from cloud.celery import app

    try:
        app.send_task(PUSH_TASK, countdown=PUSH_DEBOUNCE_S, ignore_result=True)
    except Exception:  # noqa: BLE001
        log.warning("could not queue a route push; the periodic push will carry the change", exc_info=True)


# -- pushing ---------------------------------------------------------------------------------------


def routes_push(*, now: datetime | None = None) -> dict:
    """Builds the table once and PUTs it to every registered gateway (PUSH_TIMEOUT_S each).
    Returns {"digest", "pushed", "current", "failed"} (gateway names)."""
    if not Gateway.objects.exists():
        return {"digest": None, "pushed": [], "current": [], "failed": []}
    outcome: dict[str, list] = {"pushed": [], "current": [], "failed": []}
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PUSH_LOCK])
        # Built under the lock: a push waiting behind another sends what is committed now.
        table = route_table()
        digest = table.digest()
        body = json.dumps({"version": TABLE_VERSION, "digest": digest, "table": table.as_dict()},
                          separators=(",", ":")).encode()
        now = now or timezone.now()
        with control_client() as client:
            for gateway in Gateway.objects.order_by("name"):
                outcome[_push_one(client, gateway, digest=digest, body=body, now=now)].append(gateway.name)
    return {"digest": digest, **outcome}


def control_client(*, timeout: float = PUSH_TIMEOUT_S) -> httpx.Client:
    """The client for gateways' control APIs (the push, and request stats' collection): a
    redirect is not followed (the token goes to the registered address only), and no proxy
    from the environment stands in between."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def control_url(gateway: Gateway, path: str) -> str:
    return gateway.control_url.rstrip("/") + path


def control_headers(gateway: Gateway) -> dict:
    """The bearer token; ValueError when it cannot be decrypted with the configured FERNET_KEYS."""
    return {"Authorization": f"Bearer {gateway.get_token()}"}


def _serving(client: httpx.Client, gateway: Gateway) -> str | None:
    """The digest the gateway says it serves, or None when it does not say."""
    try:
        response = client.get(control_url(gateway, "/v1/routes"), headers=control_headers(gateway))
        return response.json().get("digest") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def _push_one(client: httpx.Client, gateway: Gateway, *, digest: str, body: bytes, now: datetime) -> str:
    confirmed = (gateway.last_digest == digest and not gateway.last_error and gateway.last_success_at is not None
                 and now - gateway.last_success_at < RESEND_AFTER)
    # A gateway restarted since it took the table serves an empty one: asking costs one small
    # request, and heals it on this round instead of a minute later.
    if confirmed and _serving(client, gateway) == digest:
        return "current"
    try:
        response = client.put(control_url(gateway, "/v1/routes"), content=body,
                              headers={**control_headers(gateway), "Content-Type": "application/json"})
        error = _refusal(response, digest)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except ValueError as exc:  # the token cannot be decrypted with the configured FERNET_KEYS
        error = str(exc)
    fields: dict = {"last_push_at": now}
    if error is None:
        fields.update(last_success_at=now, last_digest=digest, last_error="")
    else:
        fields["last_error"] = error[:MAX_ERROR_LENGTH]
        log.warning("route push to gateway %s failed: %s", gateway.name, fields["last_error"])
    # Only the push's own columns: a registration changing its URL or token meanwhile is kept.
    Gateway.objects.filter(pk=gateway.pk).update(**fields)
    return "pushed" if error is None else "failed"


def _refusal(response: httpx.Response, digest: str) -> str | None:
    """None when the gateway took the table; else what it said, for an operator."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code == 200:
        served = answer.get("digest") if isinstance(answer, dict) else None
        return None if served == digest else f"the gateway answered 200 but serves digest {str(served)[:64]!r}"
    said = ""
    if isinstance(answer, dict):
        said = str(answer.get("detail") or answer.get("title") or "")
    elif response.text:
        said = response.text[:300]
    return f"HTTP {response.status_code}" + (f": {said}" if said else "")


# -- the registry ----------------------------------------------------------------------------------


def _checked_url(control_url: str) -> str:
    if len(control_url.strip()) > MAX_URL_LENGTH:
        raise InvalidInput("url", f"The control URL is at most {MAX_URL_LENGTH} characters.")
    parts = urlsplit(control_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url", "The gateway's control URL is http(s)://HOST[:PORT], e.g. http://10.0.0.5:9180.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput("url", "The control URL carries no credentials, query or fragment: the token is sent "
                                  "as a bearer token.")
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise InvalidInput("url", "The control URL's port is 1-65535.") from None
    return control_url.strip().rstrip("/")


def _checked_token(token: str) -> str:
    token = token.strip()
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable() \
            or any(c.isspace() for c in token):
        raise InvalidInput("token", f"The token is {MIN_TOKEN_LENGTH}-{MAX_TOKEN_LENGTH} printable ASCII characters "
                                    "without spaces (e.g. `openssl rand -hex 32`), the one the gateway was started "
                                    "with.")
    return token


@transaction.atomic
def gateway_register(*, name: str, control_url: str, token: str) -> tuple[Gateway, bool]:
    """Creates the gateway `name` or updates its URL and token; (gateway, created). It gets the
    table on the push this asks for."""
    if not NAME_RE.match(name or ""):
        raise InvalidInput("name", "A gateway's name is 1-63 of a-z, 0-9 and '-', starting and ending with a letter "
                                   "or digit.")
    url, token = _checked_url(control_url), _checked_token(token)
    gateway = Gateway.objects.select_for_update().filter(name=name).first()
    created = gateway is None
    if created:
        gateway = Gateway(name=name)
    gateway.control_url = url
    gateway.set_token(token)
    # Whatever the old address confirmed says nothing of the new one: push to it on the next round.
    gateway.last_digest, gateway.last_error = "", ""
    gateway.save()
    routes_changed()
    return gateway, created
