"""Operators' figures over a period, from the daily sums (never a scan of the usage records):
revenue by day (volumes included), GPU-hours sold by hardware type (and volumes' GiB-hours on a
row of their own), and utilisation per location (GPUs only).

Utilisation is allocated GPU-hours (metered GPU-seconds: GPUs held by running replicas) over
total GPU-hours (the location's GPUs x the period's hours). The fleet's size is not kept as
history, so the total counts the GPUs registered now; simulated GPUs are counted apart.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Sum

from billing.models import UsageDaily
from billing.money import SECONDS_PER_HOUR, quantize_money
from nodes.selectors import gpus_by_location, locations_list

HOURS = Decimal("0.01")


def _hours(seconds: int | None) -> Decimal:
    return (Decimal(seconds or 0) / SECONDS_PER_HOUR).quantize(HOURS)


def billing_report(*, first: date, last: date) -> dict:
    days = (last - first).days + 1
    rows = UsageDaily.objects.filter(day__gte=first, day__lte=last)
    by_day = {d: (a, s) for d, a, s in rows.values("day").annotate(a=Sum("amount"), s=Sum("gpu_seconds"))
              .values_list("day", "a", "s")}
    revenue = [{"day": first + timedelta(days=i), "amount": quantize_money(by_day.get(first + timedelta(days=i), (0, 0))[0]),
                "gpu_hours": _hours(by_day.get(first + timedelta(days=i), (0, 0))[1])} for i in range(days)]
    hardware = [{"hardware": slug, "name": name, "gpu_hours": _hours(s), "amount": quantize_money(a)}
                for slug, name, s, a in rows.filter(volume__isnull=True)
                .values("hardware_type__slug", "hardware_type__name")
                .annotate(s=Sum("gpu_seconds"), a=Sum("amount")).order_by("hardware_type__slug")
                .values_list("hardware_type__slug", "hardware_type__name", "s", "a")]
    volumes = rows.filter(volume__isnull=False).aggregate(a=Sum("amount"), gib=Sum("gib_seconds"))
    if volumes["a"] is not None:  # volume storage sold: GiB-hours in the GPU-hours column's place
        hardware.append({"hardware": "volumes", "name": "Volume storage (GiB-hours)",
                         "gpu_hours": _hours(volumes["gib"]), "amount": quantize_money(volumes["a"])})
    sold = dict(rows.values("location_id").annotate(s=Sum("gpu_seconds")).values_list("location_id", "s"))
    fleet = gpus_by_location()
    locations = []
    for location in locations_list().order_by("slug"):
        real, simulated = fleet.get(location.pk, (0, 0))
        total_hours = Decimal((real + simulated) * 24 * days)
        allocated = _hours(sold.get(location.pk))
        locations.append({
            "location": location.slug, "gpus": real, "simulated_gpus": simulated, "allocated_gpu_hours": allocated,
            "total_gpu_hours": total_hours.quantize(HOURS),
            "utilisation": f"{allocated / total_hours:.1%}" if total_hours else "no GPUs",
        })
    totals = rows.aggregate(a=Sum("amount"), s=Sum("gpu_seconds"))
    return {"first": first, "last": last, "days": days, "revenue": revenue, "hardware": hardware,
            "locations": locations, "total_amount": quantize_money(totals["a"] or 0), "total_gpu_hours": _hours(totals["s"])}
