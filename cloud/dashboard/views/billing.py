"""The billing page: billing's own selectors (balance, spend, burn rate, usage) and its CSV."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing import selectors
from billing.statements import statement_csv_response  # the API's statement: one CSV format, not two
from cloud.dashboard.charts import Day, daily_chart_svg
from cloud.dashboard.tenancy import tenant_view

DAYS = 30


@tenant_view()
def billing(request):
    now = timezone.now()
    today = now.date()
    first = today - timedelta(days=DAYS - 1)
    summary = selectors.balance_summary_for(tenant=request.tenant, now=now)
    per_day: dict = {first + timedelta(days=n): [Decimal(0), 0] for n in range(DAYS)}
    for row in selectors.usage_for(tenant=request.tenant, first=first, last=today, group_by="day"):
        per_day[row["day"]][0] += row["amount"]
        per_day[row["day"]][1] += row["gpu_seconds"]
    days = [Day(day, cost, Decimal(gpu_seconds) / 3600) for day, (cost, gpu_seconds) in per_day.items()]
    month_first = today.replace(day=1)
    usage = list(selectors.usage_for(tenant=request.tenant, first=month_first, last=today, group_by="deployment"))
    for row in usage:
        row["gpu_hours"] = Decimal(row["gpu_seconds"]) / 3600
        row["gib_hours"] = Decimal(row["gib_seconds"]) / 3600
    months = []
    cursor = month_first
    for _ in range(6):
        months.append(cursor.strftime("%Y-%m"))
        cursor = (cursor - timedelta(days=1)).replace(day=1)
    return render(request, "dashboard/billing.html", {
        "summary": summary, "chart": mark_safe(daily_chart_svg(days)),  # built from numbers and escaped dates
        "usage": usage, "totals": selectors.usage_totals_for(tenant=request.tenant, first=month_first, last=today),
        "months": months, "has_usage": any(d.cost or d.gpu_hours for d in days),
    })


@tenant_view()
def statement_csv(request, year: int, month: int):
    if not 1 <= month <= 12:
        return render(request, "dashboard/forbidden.html", {"detail": "No such month."}, status=404)
    records = selectors.statement_records_for(tenant=request.tenant, year=year, month=month)
    return statement_csv_response(records, filename=f"gantry-{request.tenant.slug}-{year:04d}-{month:02d}.csv")
