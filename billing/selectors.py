"""Tenant-scoped reads of what has been spent."""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from billing.models import UsageRecord


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.astimezone(dt_timezone.utc).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )


def spend_this_month_for(*, tenant, now: datetime | None = None) -> Decimal:
    """Metered spend of `tenant` since the start of the current calendar month (UTC)."""
    total = UsageRecord.objects.filter(tenant=tenant, period_start__gte=month_start(now)).aggregate(s=Sum("amount"))["s"]
    return total or Decimal("0")


def usage_total_for_deployment(*, deployment) -> Decimal:
    """The sum of a deployment's usage records: what `Deployment.total_cost` caches for the
    list endpoint, recomputed here for statements and reconciliation."""
    total = UsageRecord.objects.filter(deployment=deployment).aggregate(s=Sum("amount"))["s"]
    return total or Decimal("0")
