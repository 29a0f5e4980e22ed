"""Per-second metering (DESIGN section 8): each incarnation accrues units x price per unit-hour
/ 3600 per second from the moment its VM process starts (`booting`: start-up holds the GPUs as
much as running does, as RunPod and Modal bill it) to its end, and a pass every minute closes what accrued into
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

Where an interval ends: the replica's `stopped_at` (its node reported its VM gone, which the
node does only once QEMU has exited, whatever the guest said; for a lost node it is the
node's last heartbeat), or while it runs, its node's last heartbeat (never later than the
pass's clock): a node that goes silent is never charged for the seconds after its last word.
Boundaries are whole seconds (a partial second at either end is not charged). Intervals are
split where a price changes and at midnight UTC, so every record has one price and one day.

Query count per pass is constant (about a dozen statements), whatever the number of replicas.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, time as dt_time, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from billing import link
from billing.ledger import charges_append_for_staged, funds_kick
from billing.models import Meter, MeterRun, UsageDaily
from billing.money import billable_units, cost_of
from billing.prices import PriceBook, ceil_second, floor_second, list_prices_sync

log = logging.getLogger(__name__)

_FIELDS = (
    "replica_id", "tenant_id", "deployment_id", "metered_to", "unit_price_seconds", "seconds", "amount",
    "replica__stopped_at", "replica__ended_at", "replica__node__last_heartbeat", "replica__node__location_id",
    "deployment__gpus_per_container", "deployment__hardware_type_id",
)


def meters_open(rows) -> int:
    """Opens a meter (from `booted_at`, rounded up to the second) for each row of
    `replica_id, deployment_id, tenant_id, booted_at`; an existing meter is left alone, so
    opening twice never moves where billing starts."""
    made = Meter.objects.bulk_create(
        [Meter(replica_id=r["replica_id"], deployment_id=r["deployment_id"], tenant_id=r["tenant_id"],
               metered_from=ceil_second(r["booted_at"]), metered_to=ceil_second(r["booted_at"])) for r in rows],
        ignore_conflicts=True,
    )
    return len(made)


def meter_open(*, replica) -> None:
    """Called by the deployments app in the transaction that records a replica's VM started."""
    meters_open([{"replica_id": replica.pk, "deployment_id": replica.deployment_id,
                  "tenant_id": replica.deployment.tenant_id, "booted_at": replica.booted_at}])


def _next_midnight(moment: datetime) -> datetime:
    day = moment.astimezone(dt_timezone.utc).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=dt_timezone.utc)


def _end_of(ended: datetime | None, heartbeat: datetime | None, now: datetime) -> tuple[datetime, bool]:
    """(where metering stops this pass, whether that is the incarnation's end): its end, or while
    it runs, its node's last heartbeat; never past the pass's clock."""
    if ended is not None:
        ended = floor_second(ended)
        return min(ended, now), ended <= now
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


_STAGE = """
DROP TABLE IF EXISTS pg_temp.meter_records, pg_temp.meter_moves;
CREATE TEMP TABLE meter_records (
    ord integer, replica_id bigint, tenant_id bigint, deployment_id uuid, hardware_type_id bigint, location_id bigint,
    period_start timestamptz, period_end timestamptz, seconds integer, gpus smallint, units smallint,
    price numeric(10, 4), amount numeric(14, 6)) ON COMMIT DROP;
CREATE TEMP TABLE meter_moves (
    replica_id bigint, metered_to timestamptz, ups numeric, seconds bigint, amount numeric, closed boolean
) ON COMMIT DROP;
"""


def usage_close_intervals(*, now: datetime | None = None) -> MeterRun:
    """One metering pass up to `now` (the task's clock; tests pass their own). Returns the
    pass's MeterRun row.

    Python works out the intervals (price changes, midnights, running totals); the rows travel
    to PostgreSQL by COPY into two temporary tables, and a few set-based statements turn them
    into usage records, their charges, the daily sums and the meters' new positions."""
    started = time.perf_counter()
    now = floor_second(now or timezone.now())
    with transaction.atomic():
        source = link.source()
        if source is not None:
            meters_open(source.running_without_meter())
        rows = list(Meter.objects.select_for_update(skip_locked=True, of=("self",)).filter(closed=False)
                    .values_list(*_FIELDS))
        book = PriceBook.load()
        records: list[tuple] = []
        meters: list[tuple] = []
        total_amount = Decimal("0")
        for (replica_id, tenant_id, deployment_id, metered_to, ups, seconds, charged, stopped_at, ended_at, heartbeat,
             loc, gpus, hw) in rows:
            end, final = _end_of(stopped_at or ended_at, heartbeat, now)
            start = metered_to
            if end > start:
                units = billable_units(gpus)
                for a, b, price in _segments(book, hw=hw, loc=loc, start=start, end=end):
                    span = int((b - a).total_seconds())
                    ups += price * units * span
                    total = cost_of(unit_price_seconds=ups)
                    records.append((len(records), replica_id, tenant_id, deployment_id, hw, loc, a, b, span, gpus,
                                    units, price, total - charged))
                    total_amount += total - charged
                    seconds += span
                    charged = total
                meters.append((replica_id, end, ups, seconds, charged, final))
            elif final:
                meters.append((replica_id, start, ups, seconds, charged, True))
        with connection.cursor() as cursor:
            cursor.execute(_STAGE)
            _copy(cursor, "meter_records", records)
            _copy(cursor, "meter_moves", meters)
            if records:
                charges_append_for_staged(cursor, table="meter_records", at=now)
                _daily_add(cursor)
            if meters:
                _meters_move(cursor)
        list_prices_sync(now=now)
        run = MeterRun.objects.create(now=now, meters=len(rows), records=len(records), amount=total_amount,
                                      duration_ms=int((time.perf_counter() - started) * 1000))
        funds_kick()  # balances moved, grace periods ran on: warnings, stops and cancellations follow
    log.info("metering pass to %s: %d meter(s), %d record(s), %s USD in %d ms",
             now.isoformat(), run.meters, run.records, run.amount, run.duration_ms)
    return run


def _copy(cursor, table: str, rows: list[tuple]) -> None:
    if not rows:
        return
    t0 = time.perf_counter()
    with cursor.cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    if connection.queries_logged:  # count it as the statement it is (bench/metering.py prints the count)
        connection.queries_log.append({"sql": f"COPY {table} FROM STDIN -- {len(rows)} rows",
                                       "time": f"{time.perf_counter() - t0:.3f}"})


def _daily_add(cursor) -> None:
    table = UsageDaily._meta.db_table
    cursor.execute(f"""
        INSERT INTO {table} (tenant_id, deployment_id, hardware_type_id, location_id, day, amount, seconds,
                             gpu_seconds, records)
        SELECT tenant_id, deployment_id, hardware_type_id, location_id, (period_start AT TIME ZONE 'UTC')::date,
               sum(amount), sum(seconds), sum(seconds * gpus), count(*)
        FROM meter_records
        GROUP BY tenant_id, deployment_id, hardware_type_id, location_id, (period_start AT TIME ZONE 'UTC')::date
        ORDER BY deployment_id, 5, location_id  -- one lock order for every pass
        ON CONFLICT ON CONSTRAINT usage_daily_unique_deployment_day_location DO UPDATE SET
            amount = {table}.amount + EXCLUDED.amount, seconds = {table}.seconds + EXCLUDED.seconds,
            gpu_seconds = {table}.gpu_seconds + EXCLUDED.gpu_seconds, records = {table}.records + EXCLUDED.records
    """)


def _meters_move(cursor) -> None:
    cursor.execute(f"""
        UPDATE {Meter._meta.db_table} AS m SET metered_to = v.metered_to, unit_price_seconds = v.ups,
               seconds = v.seconds, amount = v.amount, closed = v.closed
        FROM meter_moves AS v WHERE m.replica_id = v.replica_id
    """)
