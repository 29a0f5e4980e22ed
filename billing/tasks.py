"""Periodic billing work; each task only calls a service (safe to run twice, concurrently, late,
or after a worker was killed half-way: see billing/metering.py).

Beat entry (cloud/settings.py CELERY_BEAT_SCHEDULE):
    "billing-meter": {"task": "billing.meter", "schedule": 60.0},
`billing.volumes_grace` needs none: every metering pass and every credit queue it
(`ledger.funds_kick`), beside the deployments app's funds pass.
"""

from __future__ import annotations

from celery import shared_task
from django.utils.dateparse import parse_datetime

from billing import services


@shared_task(name="billing.meter")
def meter(now: str | None = None) -> dict:
    """Closes running intervals into usage records and charges, up to `now` (ISO 8601; the
    worker's clock when omitted, as beat sends it)."""
    run = services.usage_close_intervals(now=parse_datetime(now) if now else None)
    return {"meters": run.meters, "records": run.records, "amount": str(run.amount), "duration_ms": run.duration_ms}


@shared_task(name="billing.volumes_grace")
def volumes_grace(now: str | None = None) -> dict:
    """Out-of-funds tenants' volumes: notices, and deletion at the end of their grace period."""
    return services.volumes_grace_enforce(now=parse_datetime(now) if now else None)
