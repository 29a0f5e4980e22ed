"""Collecting the gateways' request counts (issue 25), for `GET …/metrics/requests` and the page.

Every gateway counts, per route label and minute, the requests HAProxy logged: how many, how
many answered 5xx, and a histogram of their total time; it keeps the last hour in memory and
answers all of it at `GET /v1/stats` (docs/gateway.md). Beat runs `request_stats_collect()`
every minute: it asks every registered gateway in turn and writes one row per (gateway,
deployment, minute). Since each answer repeats the whole hour, a minute's row is replaced, not
added to, so collecting twice counts nothing twice; the API sums the gateways.

A gateway that is away, answers an error or garbage is logged and skipped, and the next one is
asked: what it counted meanwhile is collected on a later round, as long as it is still within
its hour and the gateway was not restarted. A restart empties its memory: the minutes not yet
collected are lost, and for the minute it restarted in it now reports fewer requests than were
collected; the upsert keeps the larger count (a running gateway's counts only grow). Labels that name no deployment are ignored (a deployment's label is never
reused, so a count never lands on another deployment).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone as dt_timezone

import httpx
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from cloud.deployments.models import LATENCY_BUCKETS, Deployment, Gateway, RequestMinute
from cloud.deployments.services.gateways import control_client, control_headers, control_url

log = logging.getLogger(__name__)

STATS_PATH = "/v1/stats"
STATS_TIMEOUT_S = 10.0
# An hour of minutes for a few thousand routes is a few MB; far beyond that is not a gateway.
MAX_STATS_BYTES = 64 * 1024 * 1024
KEEP = timedelta(days=2)
# A minute this far ahead of the plane's clock is a gateway with a wrong clock, not a count.
MAX_CLOCK_AHEAD = timedelta(minutes=5)
MAX_COUNT = 10**12  # per gateway, route and minute: far past what one gateway serves
MAX_ERROR_LENGTH = 300
_UPSERT_BATCH = 1000


class StatsError(Exception):
    """Why a gateway's stats could not be taken (for the log and the task's result)."""


def request_stats_collect(*, now: datetime | None = None) -> dict:
    """Asks every registered gateway for its last hour and stores it; purges rows older than KEEP.
    Returns {"collected": {gateway: rows written}, "failed": {gateway: why}, "skipped": items of
    answers that were not a valid minute, "purged": rows deleted}."""
    now = now or timezone.now()
    collected: dict[str, int] = {}
    failed: dict[str, str] = {}
    skipped = 0
    gateways = list(Gateway.objects.order_by("name"))
    if gateways:
        with control_client(timeout=STATS_TIMEOUT_S) as client:
            for gateway in gateways:
                try:
                    minutes, bad = _minutes(_fetch(client, gateway), now=now)
                except StatsError as exc:
                    failed[gateway.name] = str(exc)[:MAX_ERROR_LENGTH]
                    log.warning("request stats from gateway %s not collected: %s", gateway.name, failed[gateway.name])
                    continue
                if bad:
                    log.warning("gateway %s: %d stats entries were not a valid minute and were skipped",
                                gateway.name, bad)
                skipped += bad
                try:
                    collected[gateway.name] = _store(gateway, minutes, now=now)
                except IntegrityError:  # the gateway, or a deployment, was deleted meanwhile
                    failed[gateway.name] = "its row or a deployment's was deleted while its stats were stored"
                    log.warning("request stats from gateway %s not stored: %s", gateway.name, failed[gateway.name])
    return {"collected": collected, "failed": failed, "skipped": skipped, "purged": request_minutes_purge(now=now)}


def request_minutes_purge(*, now: datetime | None = None) -> int:
    """Deletes the rows of minutes older than KEEP; returns how many."""
    cutoff = (now or timezone.now()) - KEEP
    deleted, _ = RequestMinute.objects.filter(minute__lt=cutoff).delete()
    return deleted


# -- asking a gateway ------------------------------------------------------------------------------


def _fetch(client: httpx.Client, gateway: Gateway) -> object:
    try:
        headers = control_headers(gateway)
    except ValueError as exc:  # the token cannot be decrypted with the configured FERNET_KEYS
        raise StatsError(str(exc) or "the gateway's token cannot be decrypted") from None
    try:
        with client.stream("GET", control_url(gateway, STATS_PATH), headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise StatsError(_said(response))
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_STATS_BYTES:
                    raise StatsError(f"the answer is larger than {MAX_STATS_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise StatsError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise StatsError("the answer is not JSON") from None


def _said(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    said = str(answer.get("detail") or answer.get("title") or "") if isinstance(answer, dict) else response.text[:200]
    return f"HTTP {response.status_code}" + (f": {said}" if said else "")


def _count(value) -> int | None:
    # bool is an int to Python, and 1.0 is not a count.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _minute(value) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        minute = datetime.fromisoformat(value)
    except ValueError:
        return None
    if minute.tzinfo is None or minute.second or minute.microsecond:
        return None
    return minute.astimezone(dt_timezone.utc)


def _entry(item, *, oldest: datetime, newest: datetime) -> tuple[str, datetime, int, int, dict] | None:
    """(label, minute, requests, errors, histogram) of one valid `minutes` entry, else None."""
    if not isinstance(item, dict) or not isinstance(item.get("label"), str):
        return None
    minute = _minute(item.get("minute"))
    requests, errors = _count(item.get("requests")), _count(item.get("errors"))
    histogram = item.get("latency_ms")
    if minute is None or not oldest <= minute <= newest or requests is None or errors is None or errors > requests \
            or not isinstance(histogram, dict) or not set(histogram) <= set(LATENCY_BUCKETS):
        return None
    counts = {bucket: _count(histogram.get(bucket, 0)) for bucket in LATENCY_BUCKETS}
    # Untimed requests (the client left) are counted but in no bucket: never more timed than counted.
    if None in counts.values() or sum(counts.values()) > requests:
        return None
    return item["label"], minute, requests, errors, counts


def _minutes(answer, *, now: datetime) -> tuple[dict[tuple[str, datetime], tuple[int, int, dict]], int]:
    """The answer's valid entries by (label, minute), and how many entries were not valid. A
    (label, minute) given twice keeps its last entry."""
    if not isinstance(answer, dict) or not isinstance(answer.get("minutes"), list):
        raise StatsError('the answer is not {"minutes": [...]}')
    oldest, newest = now - KEEP, now + MAX_CLOCK_AHEAD
    minutes: dict[tuple[str, datetime], tuple[int, int, dict]] = {}
    bad = 0
    for item in answer["minutes"]:
        entry = _entry(item, oldest=oldest, newest=newest)
        if entry is None:
            bad += 1
            continue
        label, minute, requests, errors, counts = entry
        minutes[(label, minute)] = (requests, errors, counts)
    return minutes, bad


# -- storing ---------------------------------------------------------------------------------------


def _store(gateway: Gateway, minutes: dict, *, now: datetime) -> int:
    """Upserts the gateway's minutes of known deployments; returns the rows written. A row is
    replaced unless it holds more requests than the gateway reports now (it restarted in that
    minute, see the module's docstring)."""
    labels = {label for label, _ in minutes}
    deployment_ids = dict(Deployment.objects.filter(endpoint_label__in=labels).values_list("endpoint_label", "pk"))
    rows = [(gateway.pk, deployment_ids[label], minute, requests, errors, json.dumps(counts), now)
            for (label, minute), (requests, errors, counts) in minutes.items() if label in deployment_ids]
    # One order for every round: two rounds overlapping (a slow gateway) lock rows alike, never crosswise.
    rows.sort(key=lambda row: (str(row[1]), row[2]))
    table = RequestMinute._meta.db_table
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(rows), _UPSERT_BATCH):
            batch = rows[start:start + _UPSERT_BATCH]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s::jsonb, %s)"] * len(batch))
            cursor.execute(
                f"INSERT INTO {table} AS kept (gateway_id, deployment_id, minute, requests, errors, latency_ms, "
                f"collected_at) VALUES {values} "
                "ON CONFLICT (gateway_id, deployment_id, minute) DO UPDATE SET requests = EXCLUDED.requests, "
                "errors = EXCLUDED.errors, latency_ms = EXCLUDED.latency_ms, collected_at = EXCLUDED.collected_at "
                "WHERE kept.requests <= EXCLUDED.requests",
                [value for row in batch for value in row])
            written += cursor.rowcount
    return written
