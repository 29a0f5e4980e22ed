"""Forgetting old log lines and events, in bounded batches.

A log line older than LOG_RETENTION_DAYS (7 by default) and an event older than
EVENT_RETENTION_DAYS (30) are deleted by a periodic task. Each batch is its own short
transaction, so a purge never holds locks or a huge snapshot while agents insert at full rate,
and each run stops after `max_batches`: a backlog (retention shortened, a long outage) is worked
off over several runs instead of in one that never ends. Lines are found by the BRIN index on
`ts` (models.LogLine), events by their btree on `ts`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.deployments.models import Event, LogLine

BATCH = 10_000
MAX_BATCHES = 100


def _purge(model, *, cutoff: datetime, batch: int, max_batches: int) -> int:
    deleted = 0
    for _ in range(max_batches):
        with transaction.atomic():
            ids = list(model.objects.filter(ts__lt=cutoff).values_list("id", flat=True)[:batch])
            if ids:
                model.objects.filter(id__in=ids)._raw_delete(model.objects.db)
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted


def logs_purge(*, now: datetime | None = None, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> int:
    """Deletes log lines older than LOG_RETENTION_DAYS; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOG_RETENTION_DAYS)
    return _purge(LogLine, cutoff=cutoff, batch=batch, max_batches=max_batches)


def events_purge(*, now: datetime | None = None, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> int:
    """Deletes events older than EVENT_RETENTION_DAYS; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.EVENT_RETENTION_DAYS)
    return _purge(Event, cutoff=cutoff, batch=batch, max_batches=max_batches)
