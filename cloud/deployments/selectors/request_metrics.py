"""A deployment's request metrics over the last minutes, summed over the gateways that counted
them (services/request_stats.py collects the rows): tenant-scoped like every read of a deployment."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from cloud.deployments.models import LATENCY_BOUNDS_MS, LATENCY_BUCKETS, RequestMinute
from cloud.deployments.selectors.deployments import deployment_id_for

DEFAULT_MINUTES = 60
MAX_MINUTES = 1440  # a day: rows are kept two


def histogram_quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of the requests in `counts` (one count per LATENCY_BUCKETS
    bucket), interpolated linearly within the bucket it falls in, whose lower bound is the bucket
    before's upper bound (0 for the first). In the last, unbounded bucket the answer is its lower
    bound, 60000 ms: the most the histogram can say. None when no request was timed."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0
            upper = LATENCY_BOUNDS_MS[index]
            return round(lower + (upper - lower) * (rank - below) / count, 1)
        below += count
    return float(LATENCY_BOUNDS_MS[-1])  # unreachable: rank <= total


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def request_metrics_for(*, tenant, deployment_id, minutes: int = DEFAULT_MINUTES, now: datetime | None = None) -> dict:
    """The deployment's requests in the `minutes` minutes ending with the current one (which is
    still being counted): {"window_start", "window_end", "requests", "errors", "error_rate",
    "latency_ms": {"p50", "p99"}, "minutes": [{"minute", "requests", "errors"}, ...]} with one
    entry per minute, oldest first, zero when nothing was counted. error_rate and the quantiles
    are None without requests. NotFound when the deployment is not the tenant's."""
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"minutes is 1..{MAX_MINUTES}")
    pk = deployment_id_for(tenant=tenant, deployment_id=deployment_id)
    window_end = _floor_minute(now or timezone.now()) + timedelta(minutes=1)
    window_start = window_end - timedelta(minutes=minutes)
    rows = RequestMinute.objects.filter(deployment_id=pk, minute__gte=window_start, minute__lt=window_end)
    per_minute = {row["minute"]: row for row in
                  rows.values("minute").annotate(requests=Sum("requests"), errors=Sum("errors")).order_by()}
    counts = [0] * len(LATENCY_BUCKETS)
    for histogram in rows.values_list("latency_ms", flat=True):
        for index, bucket in enumerate(LATENCY_BUCKETS):
            counts[index] += int(histogram.get(bucket, 0))
    series = []
    for n in range(minutes):
        minute = window_start + timedelta(minutes=n)
        row = per_minute.get(minute)
        series.append({"minute": minute, "requests": row["requests"] if row else 0,
                       "errors": row["errors"] if row else 0})
    requests = sum(entry["requests"] for entry in series)
    errors = sum(entry["errors"] for entry in series)
    return {
        "window_start": window_start, "window_end": window_end, "requests": requests, "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else None,
        "latency_ms": {"p50": histogram_quantile(counts, 0.5), "p99": histogram_quantile(counts, 0.99)},
        "minutes": series,
    }
