"""Reads of money: balances, spend, burn rates, usage, statements, and the expressions other
apps annotate onto their own querysets (a deployment's cost, a tenant's funds notices) so
their list endpoints stay one query. Tenant-scoped reads take `tenant=`."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import Case, DecimalField, ExpressionWrapper, F, Func, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, Greatest, JSONObject, Least
from django.utils import timezone

from billing.models import FundsNotice, LedgerEntry, Meter, UsageDaily, UsageRecord
from billing.money import HOURS_PER_MONTH, SECONDS_PER_HOUR, billable_units, quantize_money
from billing.prices import PriceBook, floor_second, unit_price_expression

ZERO = Decimal("0")
_MONEY = DecimalField(max_digits=30, decimal_places=10)


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.astimezone(dt_timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_bounds(year: int, month: int) -> tuple[date, date]:
    """First and last day of a calendar month."""
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


# --- balances -------------------------------------------------------------------------------

def tenant_balance(*, tenant) -> Decimal:
    """The sum of the tenant's ledger: the running sum on its newest entry (one index step)."""
    last = LedgerEntry.objects.filter(tenant=tenant).order_by("-seq").values_list("balance_after", flat=True).first()
    return last if last is not None else ZERO


def ledger_heads(tenant_ids: list[int]) -> dict[int, tuple[int, Decimal]]:
    """(last seq, balance) of each tenant's ledger, for tenants that have one: one backward
    index step per tenant (a DISTINCT ON would read every entry of every tenant)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT t.id, l.seq, l.balance_after FROM unnest(%s::bigint[]) AS t(id)
                JOIN LATERAL (SELECT seq, balance_after FROM {LedgerEntry._meta.db_table}
                              WHERE tenant_id = t.id ORDER BY seq DESC LIMIT 1) l ON true""",
            [list(tenant_ids)],
        )
        return {tenant_id: (seq, balance) for tenant_id, seq, balance in cursor.fetchall()}


def balance_expression(*, tenant_ref: str = "pk") -> Coalesce:
    """The balance of the tenant in `tenant_ref`, for annotating querysets of other apps."""
    last = (LedgerEntry.objects.filter(tenant_id=OuterRef(tenant_ref)).order_by("-seq")
            .values("balance_after")[:1])
    return Coalesce(Subquery(last), Value(ZERO, output_field=_MONEY), output_field=_MONEY)


def balances_for(*, tenant_ids) -> dict[int, Decimal]:
    heads = ledger_heads(sorted(set(tenant_ids)))
    return {tenant_id: heads.get(tenant_id, (0, ZERO))[1] for tenant_id in tenant_ids}


def ledger_for(*, tenant):
    return LedgerEntry.objects.filter(tenant=tenant).order_by("-seq")


# --- spend ------------------------------------------------------------------------------------

def spend_this_month_for(*, tenant, now: datetime | None = None) -> Decimal:
    """Metered spend of `tenant` in the current calendar month (UTC)."""
    return spend_this_month_by_tenant(tenant_ids=[tenant.pk], now=now).get(tenant.pk, ZERO)


def spend_this_month_by_tenant(*, tenant_ids, now: datetime | None = None) -> dict[int, Decimal]:
    first = month_start(now).date()
    rows = (UsageDaily.objects.filter(tenant_id__in=list(tenant_ids), day__gte=first)
            .values("tenant_id").annotate(s=Sum("amount")).values_list("tenant_id", "s"))
    return dict(rows)


def _accruing_meters():
    return Meter.objects.filter(closed=False, replica__isnull=False, replica__stopped_at__isnull=True,
                                replica__ended_at__isnull=True)


def _accruing_volume_meters():
    return Meter.objects.filter(closed=False, volume__isnull=False, ends_at__isnull=True)


def burn_rates(*, tenant_ids=None, now: datetime | None = None) -> dict[int, Decimal]:
    """USD per hour each tenant's running incarnations and live volumes cost at today's prices
    (a volume: its GiB x the price per GiB-month / 730)."""
    now = now or timezone.now()
    meters, volumes = _accruing_meters(), _accruing_volume_meters()
    if tenant_ids is not None:
        meters = meters.filter(tenant_id__in=list(tenant_ids))
        volumes = volumes.filter(tenant_id__in=list(tenant_ids))
    rows = list(meters.values_list("tenant_id", "deployment__gpus_per_container", "deployment__hardware_type_id",
                                   "replica__node__location_id"))
    volume_rows = list(volumes.values_list("tenant_id", "volume__size_gib", "volume__location_id"))
    book = PriceBook.load(hardware_type_ids={hw for _, _, hw, _ in rows}, volumes=bool(volume_rows))
    rates: dict[int, Decimal] = {}
    for tenant_id, gpus, hw, loc in rows:
        price = book.at(hardware_type_id=hw, location_id=loc, at=now)
        rates[tenant_id] = rates.get(tenant_id, ZERO) + price * billable_units(gpus)
    for tenant_id, gib, loc in volume_rows:
        price = book.volume_at(location_id=loc, at=now)
        rates[tenant_id] = rates.get(tenant_id, ZERO) + price * gib / HOURS_PER_MONTH
    return {tenant_id: quantize_money(rate) for tenant_id, rate in rates.items()}


def funds_exhausted_by(*, balance: Decimal, spent: Decimal, limit: Decimal | None) -> str | None:
    """Why a tenant is out of funds (`balance`: none left; `spend_limit`: its monthly limit is
    reached), or None: the rule that stops its deployments and, days later, deletes its volumes."""
    if balance <= 0:
        return "balance"
    if limit is not None and spent >= limit:
        return "spend_limit"
    return None


def usd(amount: Decimal) -> str:
    return f"{amount:.2f} USD"


def funds_why_and_fix(cause: str, *, balance: Decimal, spent: Decimal, limit: Decimal | None) -> tuple[str, str]:
    """What the notices and emails say of an exhausted tenant: why (from `funds_exhausted_by`)
    and what to do about it."""
    if cause == "balance":
        return f"balance {usd(balance)}", "add credit"
    return f"monthly spend limit {usd(limit)} reached ({usd(spent)} spent)", "raise the spend limit"


@dataclass(frozen=True)
class BalanceSummary:
    balance: Decimal
    spend_this_month: Decimal
    spend_limit: Decimal | None
    burn_rate_per_hour: Decimal
    hours_left: Decimal | None
    as_of: datetime


def balance_summary_for(*, tenant, now: datetime | None = None) -> BalanceSummary:
    now = now or timezone.now()
    balance = tenant_balance(tenant=tenant)
    burn = burn_rates(tenant_ids=[tenant.pk], now=now).get(tenant.pk, ZERO)
    hours = (max(balance, ZERO) / burn).quantize(Decimal("0.01")) if burn > 0 else None
    return BalanceSummary(balance=balance, spend_this_month=spend_this_month_for(tenant=tenant, now=now),
                          spend_limit=tenant.spend_limit, burn_rate_per_hour=burn, hours_left=hours, as_of=now)


# --- annotations for other apps' querysets ------------------------------------------------------

def deployment_cost_annotations(*, now: datetime, deployment_ref: str = "pk") -> dict:
    """`metered_cost` (the deployment's usage records, summed on its meters) and `accruing_cost`
    (what its incarnations have run since their last record, up to `now`, at today's price):
    `total_cost` is their sum. Correlated subqueries, so a list stays one query."""
    metered = (Meter.objects.filter(deployment_id=OuterRef(deployment_ref)).order_by()
               .values("deployment_id").annotate(s=Sum("amount")).values("s"))
    accruing = (Meter.objects.filter(deployment_id=OuterRef(deployment_ref), closed=False).order_by()
                .values("deployment_id").annotate(s=Sum(_accruing(now), output_field=_MONEY)).values("s"))
    return {
        "metered_cost": Coalesce(Subquery(metered, output_field=_MONEY), Value(ZERO, output_field=_MONEY)),
        "accruing_cost": Coalesce(Subquery(accruing, output_field=_MONEY), Value(ZERO, output_field=_MONEY)),
    }


def billed_interval(*, metered_from: datetime | None, metered_to: datetime | None, closed: bool,
                    ended: datetime | None) -> tuple[datetime | None, datetime | None]:
    """(billed_from, billed_to) of an incarnation, as its usage records add up: from its meter's
    start to where the metering pass ends it, by the pass's own rule (`_end_of`: its end,
    floored to the second, never before the start). `billed_to` is None until a node reports
    it ended; both are None when it never booted."""
    if metered_from is None:
        return None, None
    if closed:
        return metered_from, metered_to
    if ended is None:
        return metered_from, None
    return metered_from, max(metered_from, floor_second(ended))


def billed_interval_annotations(*, replica_ref: str = "pk") -> dict:
    """`meter_from`, `meter_to` and `meter_closed` of the incarnation in `replica_ref`, for
    `billed_interval_of` (a replica list stays one query)."""
    meter = Meter.objects.filter(replica_id=OuterRef(replica_ref))
    return {
        "meter_from": Subquery(meter.values("metered_from")[:1]),
        "meter_to": Subquery(meter.values("metered_to")[:1]),
        "meter_closed": Subquery(meter.values("closed")[:1]),
    }


def billed_interval_of(replica) -> tuple[datetime | None, datetime | None]:
    """(billed_from, billed_to) of a replica annotated with `billed_interval_annotations`: the
    interval its usage records cover, to the second (billed_to None while it runs)."""
    return billed_interval(metered_from=getattr(replica, "meter_from", None), metered_to=getattr(replica, "meter_to", None),
                           closed=bool(getattr(replica, "meter_closed", False)),
                           ended=replica.stopped_at or replica.ended_at)


def _accruing(now: datetime):
    """Per open meter: what its incarnation has run since `metered_to`, up to `now` (or its end),
    at today's price for its hardware and location, in USD (unrounded)."""
    end = Least(Coalesce("replica__stopped_at", "replica__ended_at", Value(now)), Value(now))
    seconds = Greatest(Func(end - F("metered_to"), template="EXTRACT(EPOCH FROM %(expressions)s)",
                            output_field=_MONEY), Value(0, output_field=_MONEY))
    units = Case(When(deployment__gpus_per_container=0, then=Value(1)), default=F("deployment__gpus_per_container"),
                 output_field=_MONEY)
    price = unit_price_expression(hardware_type_ref="deployment__hardware_type_id",
                                  location_ref="replica__node__location_id", at=now)
    return ExpressionWrapper(price * units * seconds / Value(SECONDS_PER_HOUR, output_field=_MONEY),
                             output_field=_MONEY)


def deployment_cost_for(*, deployment_id, now: datetime | None = None) -> Decimal:
    """total_cost of one deployment: its records plus what accrues up to now (six places)."""
    now = now or timezone.now()
    meters = Meter.objects.filter(deployment_id=deployment_id)
    metered = meters.aggregate(s=Sum("amount"))["s"] or ZERO
    accruing = meters.filter(closed=False).aggregate(s=Sum(_accruing(now), output_field=_MONEY))["s"] or ZERO
    return quantize_money(metered + accruing)


# The notices about deployments (the deployments app's funds pass opens and closes them); the
# `volumes` notice is billing's own (billing.grace) and outlives the deployments it stopped.
DEPLOYMENT_NOTICE_KINDS = (FundsNotice.Kind.LOW_BALANCE, FundsNotice.Kind.EXHAUSTED)


def funds_notices_expression(*, tenant_ref: str = "tenant_id") -> ArraySubquery:
    """The tenant's open funds notices about deployments as a JSON array (kind, cause, message,
    stop_at)."""
    return ArraySubquery(
        FundsNotice.objects.filter(tenant_id=OuterRef(tenant_ref), closed_at__isnull=True,
                                   kind__in=DEPLOYMENT_NOTICE_KINDS).order_by("kind")
        .values(json=JSONObject(kind="kind", cause="cause", message="message", stop_at="stop_at"))
    )


def volume_notices_open(*, tenant_ids=None) -> dict[int, FundsNotice]:
    """{tenant id: its open `volumes` notice} (every tenant's when `tenant_ids` is None)."""
    notices = FundsNotice.objects.filter(closed_at__isnull=True, kind=FundsNotice.Kind.VOLUMES)
    if tenant_ids is not None:
        notices = notices.filter(tenant_id__in=list(tenant_ids))
    return {notice.tenant_id: notice for notice in notices}


def live_volumes_by_tenant(*, tenant_ids=None) -> dict[int, list[tuple]]:
    """{tenant id: [(volume id, name, GiB), ...]} of the volumes billing meters now (created,
    not deleted), oldest first: what a tenant out of funds would lose."""
    meters = _accruing_volume_meters()
    if tenant_ids is not None:
        meters = meters.filter(tenant_id__in=list(tenant_ids))
    out: dict[int, list[tuple]] = {}
    for tenant_id, volume_id, name, gib in (meters.order_by("metered_from", "id")
                                            .values_list("tenant_id", "volume_id", "volume__name", "volume__size_gib")):
        out.setdefault(tenant_id, []).append((volume_id, name, gib))
    return out


def open_notices_for(*, tenant_ids=None) -> dict[int, dict[str, FundsNotice]]:
    """{tenant id: {kind: notice}} of open funds notices about deployments (of every tenant
    when `tenant_ids` is None)."""
    notices = FundsNotice.objects.filter(closed_at__isnull=True, kind__in=DEPLOYMENT_NOTICE_KINDS)
    if tenant_ids is not None:
        notices = notices.filter(tenant_id__in=list(tenant_ids))
    out: dict[int, dict[str, FundsNotice]] = {}
    for notice in notices:
        out.setdefault(notice.tenant_id, {})[notice.kind] = notice
    return out


# --- usage and statements -----------------------------------------------------------------------

_ROW = ("deployment_id", "deployment__name", "hardware_type_id", "hardware_type__slug", "volume_id", "volume__name")
# Every row is one deployment's (its hardware is fixed at creation) or one volume's; `day` adds
# the day to the key. `volume` lists the volumes' rows only.
GROUPINGS = {"deployment": _ROW, "day": ("day", *_ROW), "hardware": _ROW, "volume": _ROW}
# PostgreSQL puts NULLs last in ascending order: the volumes' rows (no deployment, no hardware)
# come after the deployments' within each group.
_ORDER = {
    "deployment": ("-amount", "deployment_id", "volume_id"),
    "day": ("day", "deployment_id", "volume_id"),
    "hardware": ("hardware_type_id", "-amount", "deployment_id", "volume_id"),
    "volume": ("-amount", "volume_id"),
}


def usage_for(*, tenant, first: date, last: date, group_by: str):
    """The tenant's usage from `first` to `last` (UTC days, both included), one row per
    deployment or volume within each group (`day` or `hardware`, or just per deployment and
    volume; `volume`: the volumes only): amount, seconds, GPU-seconds and GiB-seconds behind it.
    Rows of deleted deployments and volumes are kept: they were used."""
    rows = UsageDaily.objects.filter(tenant=tenant, day__gte=first, day__lte=last)
    if group_by == "volume":
        rows = rows.filter(volume__isnull=False)
    return (rows.values(*GROUPINGS[group_by])
            .annotate(amount=Sum("amount"), seconds=Sum("seconds"), gpu_seconds=Sum("gpu_seconds"),
                      gib_seconds=Sum("gib_seconds"))
            .order_by(*_ORDER[group_by]))


def usage_totals_for(*, tenant, first: date, last: date) -> dict:
    # Aliases apart from the column names: an aggregate named `amount` would shadow the column
    # for the filtered sum after it.
    totals = UsageDaily.objects.filter(tenant=tenant, day__gte=first, day__lte=last).aggregate(
        a=Sum("amount"), s=Sum("seconds"), g=Sum("gpu_seconds"), gib=Sum("gib_seconds"),
        va=Sum("amount", filter=Q(volume__isnull=False)))
    return {"amount": totals["a"] or ZERO, "seconds": totals["s"] or 0, "gpu_seconds": totals["g"] or 0,
            "gib_seconds": totals["gib"] or 0, "volumes_amount": totals["va"] or ZERO}


def statement_records_for(*, tenant, year: int, month: int):
    """Every usage record of the tenant whose period starts in that month (records never cross
    midnight UTC, so never a month either), oldest first, for streaming."""
    first, last = month_bounds(year, month)
    start = datetime(first.year, first.month, 1, tzinfo=dt_timezone.utc)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=dt_timezone.utc)
    return (UsageRecord.objects.filter(tenant=tenant, period_start__gte=start, period_start__lt=end)
            .order_by("period_start", "id")
            .values_list("id", "period_start", "period_end", "deployment_id", "deployment__name", "replica__uid",
                         "replica__ordinal", "replica__generation", "hardware_type__slug", "location__slug", "gpus",
                         "units", "seconds", "price_per_unit_hour", "amount", "volume_id", "volume__name",
                         "price_per_gib_month"))
