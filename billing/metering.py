"""Per-second metering (DESIGN section 8): each incarnation accrues units x price per unit-hour
/ 3600 per second from `running` to its end, and a pass every minute closes what accrued into
`UsageRecord` rows, each also a `charge` in the ledger, in one transaction.

Why it is safe to run twice, concurrently, late, or killed half-way:
- a pass claims meters FOR UPDATE SKIP LOCKED: a concurrent pass skips what this one holds and
  finds it metered once this one commits;
- a record starts where the meter stopped (`metered_to`) and the meter moves in the same
  transaction as the records, the ledger and the daily sums: a pass killed half-way rolls all
  of it back, and the next one starts from the same place;
- (replica, period_start) is unique, so a record can never be written twice even by code that
  skipped the lock;
- a late pass simply closes a longer interval: nothing is charged per pass.

Where an interval ends: the replica's `stopped_at` (it left running; for a lost node that is
the node's last heartbeat), or while it runs, its node's last heartbeat (never later than the
pass's clock): a node that goes silent is never charged for the seconds after its last word.
Boundaries are whole seconds (a partial second at either end is not charged). Intervals are
split where a price changes and at midnight UTC, so every record has one price and one day.

Query count per pass is constant (about a dozen statements), whatever the number of replicas.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, time as dt_time, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from billing import link
from billing.ledger import Posting, funds_kick, ledger_append
from billing.models import LedgerEntry, Meter, MeterRun, UsageDaily, UsageRecord
from billing.money import billable_units, cost_of
from billing.prices import PriceBook, ceil_second, floor_second, list_prices_sync

log = logging.getLogger(__name__)

_FIELDS = (
    "replica_id", "tenant_id", "deployment_id", "metered_to", "unit_price_seconds", "seconds", "amount",
    "replica__stopped_at", "replica__ended_at", "replica__node__last_heartbeat", "replica__node__location_id",
    "deployment__gpus_per_container", "deployment__hardware_type_id",
)


def meters_open(rows) -> int:
    """Opens a meter (from `started_at`, rounded up to the second) for each row of
    `replica_id, deployment_id, tenant_id, started_at`; an existing meter is left alone."""
    made = Meter.objects.bulk_create(
        [Meter(replica_id=r["replica_id"], deployment_id=r["deployment_id"], tenant_id=r["tenant_id"],
               metered_to=ceil_second(r["started_at"])) for r in rows],
        ignore_conflicts=True,
    )
    return len(made)


def meter_open(*, replica) -> None:
    """Called by the deployments app in the transaction that marks a replica running."""
    meters_open([{"replica_id": replica.pk, "deployment_id": replica.deployment_id,
                  "tenant_id": replica.deployment.tenant_id, "started_at": replica.started_at}])


def _next_midnight(moment: datetime) -> datetime:
    day = moment.astimezone(dt_timezone.utc).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=dt_timezone.utc)


def _end_of(row: dict, now: datetime) -> tuple[datetime, bool]:
    """(where metering stops this pass, whether that is the incarnation's end)."""
    ended = row["replica__stopped_at"] or row["replica__ended_at"]
    if ended is not None:
        ended = floor_second(ended)
        return min(ended, now), ended <= now
    heartbeat = row["replica__node__last_heartbeat"]
    return (min(now, floor_second(heartbeat)) if heartbeat is not None else now), False


def _segments(book: PriceBook, *, hw: int, loc: int | None, start: datetime, end: datetime):
    """[start, end) cut at price changes and midnights: (from, to, price) with whole seconds."""
    cuts = set(book.changes(hardware_type_id=hw, location_id=loc, start=start, end=end))
    midnight = _next_midnight(start)
    while midnight < end:
        cuts.add(midnight)
        midnight += timedelta(days=1)
    points = [start, *sorted(cuts), end]
    pieces: list[list] = []
    for a, b in zip(points, points[1:]):
        price = book.at(hardware_type_id=hw, location_id=loc, at=a)
        at_midnight = a.astimezone(dt_timezone.utc).time() == dt_time(0)
        if pieces and pieces[-1][2] == price and not at_midnight:
            pieces[-1][1] = b  # a change that changed nothing here (a shared price under this location's own)
        else:
            pieces.append([a, b, price])
    return pieces


def usage_close_intervals(*, now: datetime | None = None) -> MeterRun:
    """One metering pass up to `now` (the task's clock; tests pass their own). Returns the
    pass's MeterRun row."""
    started = time.perf_counter()
    now = floor_second(now or timezone.now())
    with transaction.atomic():
        source = link.source()
        if source is not None:
            meters_open(source.running_without_meter())
        rows = list(Meter.objects.select_for_update(skip_locked=True, of=("self",)).filter(closed=False)
                    .values(*_FIELDS))
        book = PriceBook.load()
        records: list[UsageRecord] = []
        meters: list[tuple] = []
        for row in rows:
            end, final = _end_of(row, now)
            start = row["metered_to"]
            ups, seconds, charged = row["unit_price_seconds"], row["seconds"], row["amount"]
            if end > start:
                hw, loc = row["deployment__hardware_type_id"], row["replica__node__location_id"]
                gpus = row["deployment__gpus_per_container"]
                units = billable_units(gpus)
                for a, b, price in _segments(book, hw=hw, loc=loc, start=start, end=end):
                    span = int((b - a).total_seconds())
                    ups += price * units * span
                    total = cost_of(unit_price_seconds=ups)
                    records.append(UsageRecord(
                        tenant_id=row["tenant_id"], deployment_id=row["deployment_id"], replica_id=row["replica_id"],
                        hardware_type_id=hw, location_id=loc, period_start=a, period_end=b, seconds=span, gpus=gpus,
                        units=units, price_per_unit_hour=price, amount=total - charged,
                    ))
                    seconds += span
                    charged = total
                meters.append((row["replica_id"], end, ups, seconds, charged, final))
            elif final:
                meters.append((row["replica_id"], start, ups, seconds, charged, True))
        records = UsageRecord.objects.bulk_create(records)
        ledger_append([
            Posting(tenant_id=r.tenant_id, kind=LedgerEntry.Kind.CHARGE, amount=-r.amount, usage_record=r,
                    actor_name="system:metering",
                    reason=f"{r.seconds} s x {r.units} unit(s) at {r.price_per_unit_hour}/h "
                           f"({r.period_start:%Y-%m-%d %H:%M:%S}Z-{r.period_end:%H:%M:%S}Z)")
            for r in records
        ], at=now)
        _daily_add(records)
        _meters_move(meters)
        list_prices_sync(now=now)
        run = MeterRun.objects.create(
            now=now, meters=len(rows), records=len(records), amount=sum((r.amount for r in records), Decimal("0")),
            duration_ms=int((time.perf_counter() - started) * 1000),
        )
        funds_kick()  # balances moved, grace periods ran on: warnings, stops and cancellations follow
    log.info("metering pass to %s: %d meter(s), %d record(s), %s USD in %d ms",
             now.isoformat(), run.meters, run.records, run.amount, run.duration_ms)
    return run


def _daily_add(records: list[UsageRecord]) -> None:
    sums: dict[tuple, list] = {}
    for r in records:
        key = (r.deployment_id, r.period_start.astimezone(dt_timezone.utc).date(), r.location_id)
        acc = sums.setdefault(key, [r.tenant_id, r.hardware_type_id, Decimal("0"), 0, 0, 0])
        acc[2] += r.amount
        acc[3] += r.seconds
        acc[4] += r.seconds * r.gpus
        acc[5] += 1
    if not sums:
        return
    keys = sorted(sums, key=lambda k: (str(k[0]), k[1], k[2] or 0))  # one lock order for every pass
    cols = defaultdict(list)
    for key in keys:
        tenant_id, hw, amount, seconds, gpu_seconds, count = sums[key]
        for name, value in (("tenant", tenant_id), ("deployment", key[0]), ("hw", hw), ("loc", key[2]),
                            ("day", key[1]), ("amount", amount), ("seconds", seconds), ("gpu", gpu_seconds),
                            ("records", count)):
            cols[name].append(value)
    table = UsageDaily._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table} (tenant_id, deployment_id, hardware_type_id, location_id, day, amount, seconds,
                                     gpu_seconds, records)
                SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::bigint[], %s::bigint[], %s::date[], %s::numeric[],
                                     %s::bigint[], %s::bigint[], %s::int[])
                ON CONFLICT ON CONSTRAINT usage_daily_unique_deployment_day_location DO UPDATE SET
                    amount = {table}.amount + EXCLUDED.amount, seconds = {table}.seconds + EXCLUDED.seconds,
                    gpu_seconds = {table}.gpu_seconds + EXCLUDED.gpu_seconds, records = {table}.records + EXCLUDED.records""",
            [cols[n] for n in ("tenant", "deployment", "hw", "loc", "day", "amount", "seconds", "gpu", "records")],
        )


def _meters_move(meters: list[tuple]) -> None:
    if not meters:
        return
    ids, tos, ups, seconds, amounts, closed = (list(c) for c in zip(*meters))
    table = Meter._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table} AS m SET metered_to = v.metered_to, unit_price_seconds = v.ups, seconds = v.seconds,
                                       amount = v.amount, closed = v.closed
                FROM unnest(%s::bigint[], %s::timestamptz[], %s::numeric[], %s::bigint[], %s::numeric[], %s::bool[])
                     AS v(replica_id, metered_to, ups, seconds, amount, closed)
                WHERE m.replica_id = v.replica_id""",
            [ids, tos, ups, seconds, amounts, closed],
        )
