"""Per-second metering (DESIGN section 8): each incarnation accrues units x price per unit-hour
/ 3600 per second from the moment its VM process starts (`booting`: start-up holds the GPUs as
much as running does, as RunPod and Modal bill it) to its end, and each volume its provisioned
GiB x price per GiB-month / (730 x 3600) per second from its creation to its deletion; a pass
every minute closes what accrued into `UsageRecord` rows, each also a `charge` in the ledger,
in one transaction. Incarnations and volumes go through the same meters, the same pass and the
same statements: only where an interval ends and what it is priced at differ.

Why it is safe to run twice, concurrently, late, or killed half-way:
- a pass claims meters FOR UPDATE SKIP LOCKED: a concurrent pass skips what this one holds and
  finds it metered once this one commits;
- a record starts where the meter stopped (`metered_to`) and the meter moves in the same
  transaction as the records, the ledger and the daily sums: a pass killed half-way rolls all
  of it back, and the next one starts from the same place;
- (replica, period_start) and (volume, period_start) are unique, so a record can never be
  written twice even by code that skipped the lock;
- a late pass simply closes a longer interval: nothing is charged per pass.

Where an interval ends: the replica's `stopped_at` (its node reported its VM gone, which the
node does only once QEMU has exited, whatever the guest said; for a lost node it is the
node's last heartbeat), or while it runs, its node's last heartbeat (never later than the
pass's clock): a node that goes silent is never charged for the seconds after its last word.
A volume's interval ends at its deletion (`Meter.ends_at`), or while it lives, at the pass's
clock: its space is held whether its node is heard from or not.
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
from billing.money import SECONDS_PER_HOUR, SECONDS_PER_MONTH, billable_units, cost_of
from billing.prices import PriceBook, ceil_second, floor_second, list_prices_sync

log = logging.getLogger(__name__)

_FIELDS = (
    "id", "replica_id", "volume_id", "tenant_id", "deployment_id", "metered_to", "unit_price_seconds", "seconds",
    "amount", "ends_at",
    "replica__stopped_at", "replica__ended_at", "replica__node__last_heartbeat", "replica__node__location_id",
    "deployment__gpus_per_container", "deployment__hardware_type_id",
    "volume__size_gib", "volume__location_id",
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


def volume_meters_open(rows) -> int:
    """Opens a meter for each row of `volume_id, tenant_id, created_at` and optionally
    `deleted_at` (a volume already gone is metered to then), from its creation rounded up to the
    second; an existing meter is left alone, so opening twice never moves where billing starts."""
    made = Meter.objects.bulk_create(
        [Meter(volume_id=r["volume_id"], tenant_id=r["tenant_id"], metered_from=ceil_second(r["created_at"]),
               metered_to=ceil_second(r["created_at"]),
               ends_at=floor_second(r["deleted_at"]) if r.get("deleted_at") else None) for r in rows],
        ignore_conflicts=True,
    )
    return len(made)


def meter_volume_open(volume) -> None:
    """Called by the volumes app in the transaction that creates `volume`: its provisioned GiB
    are billed from its `created_at` on."""
    volume_meters_open([{"volume_id": volume.pk, "tenant_id": volume.tenant_id, "created_at": volume.created_at}])


def meter_volume_close(volume, at: datetime) -> datetime:
    """Called by the volumes app in the transaction that deletes `volume` (asked for at `at`):
    it is billed up to `at` and no further; the next pass writes its last record and closes
    the meter. Returns where billing ends. Idempotent: a second call never moves the end. A
    volume the metering never saw is opened here and ends at once."""
    volume_meters_open([{"volume_id": volume.pk, "tenant_id": volume.tenant_id, "created_at": volume.created_at}])
    return volume_meter_end(volume_id=volume.pk, at=at)


def volume_meter_end(*, volume_id, at: datetime) -> datetime:
    """Ends the volume's meter at `at` unless it has an end already. Waits for a pass that holds
    the meter (FOR UPDATE): one that already metered past `at` (its clock ran ahead of the
    caller's) has charged to there, so the end is never before what was charged."""
    meter = Meter.objects.select_for_update().get(volume_id=volume_id)
    if meter.ends_at is None:
        meter.ends_at = max(floor_second(at), meter.metered_to)
        meter.save(update_fields=["ends_at"])
    return meter.ends_at


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


def _segments(*, changes, price_at, start: datetime, end: datetime):
    """[start, end) cut at price changes and midnights: (from, to, price) with whole seconds.
    `changes` are the instants inside it where the price may change, `price_at(instant)` the
    price from then (a hardware type's per unit-hour, or volumes' per GiB-month)."""
    cuts = set(changes)
    midnight = _next_midnight(start)
    while midnight < end:
        cuts.add(midnight)
        midnight += timedelta(days=1)
    points = [start, *sorted(cuts), end]
    pieces: list[list] = []
    for a, b in zip(points, points[1:]):
        price = price_at(a)
        at_midnight = a.astimezone(dt_timezone.utc).time() == dt_time(0)
        if pieces and pieces[-1][2] == price and not at_midnight:
            pieces[-1][1] = b  # a change that changed nothing here (a shared price under this location's own)
        else:
            pieces.append([a, b, price])
    return pieces


def _replica_segments(book: PriceBook, *, hw: int, loc: int | None, start: datetime, end: datetime):
    return _segments(changes=book.changes(hardware_type_id=hw, location_id=loc, start=start, end=end),
                     price_at=lambda at: book.at(hardware_type_id=hw, location_id=loc, at=at), start=start, end=end)


def _volume_segments(book: PriceBook, *, loc: int, start: datetime, end: datetime):
    return _segments(changes=book.volume_changes(location_id=loc, start=start, end=end),
                     price_at=lambda at: book.volume_at(location_id=loc, at=at), start=start, end=end)


_STAGE = """
DROP TABLE IF EXISTS pg_temp.meter_records, pg_temp.meter_moves;
CREATE TEMP TABLE meter_records (
    ord integer, replica_id bigint, volume_id uuid, tenant_id bigint, deployment_id uuid, hardware_type_id bigint,
    location_id bigint, period_start timestamptz, period_end timestamptz, seconds integer, gpus smallint,
    units integer, price numeric(10, 4), price_month numeric(10, 4), amount numeric(14, 6)) ON COMMIT DROP;
CREATE TEMP TABLE meter_moves (
    meter_id bigint, metered_to timestamptz, ups numeric, seconds bigint, amount numeric, closed boolean
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
        keeper = link.volume_keeper()
        if keeper is not None:
            volume_meters_open(keeper.volumes_without_meter())
        rows = list(Meter.objects.select_for_update(skip_locked=True, of=("self",)).filter(closed=False)
                    .values_list(*_FIELDS))
        book = PriceBook.load(volumes=True)
        records: list[tuple] = []
        meters: list[tuple] = []
        total_amount = Decimal("0")
        for (meter_id, replica_id, volume_id, tenant_id, deployment_id, metered_to, ups, seconds, charged, ends_at,
             stopped_at, ended_at, heartbeat, node_loc, gpus, hw, gib, volume_loc) in rows:
            if volume_id is None:
                end, final = _end_of(stopped_at or ended_at, heartbeat, now)
            else:
                # Provisioned space is held whether its node is heard from or not: to its deletion.
                end, final = _end_of(ends_at, None, now)
            start = metered_to
            if end > start:
                if volume_id is None:
                    units, loc, per = billable_units(gpus), node_loc, SECONDS_PER_HOUR
                    pieces = _replica_segments(book, hw=hw, loc=loc, start=start, end=end)
                else:
                    units, loc, per, gpus, hw = gib, volume_loc, SECONDS_PER_MONTH, 0, None
                    pieces = _volume_segments(book, loc=loc, start=start, end=end)
                for a, b, price in pieces:
                    span = int((b - a).total_seconds())
                    ups += price * units * span
                    total = cost_of(unit_price_seconds=ups, per=per)
                    hourly, monthly = (price, None) if volume_id is None else (None, price)
                    records.append((len(records), replica_id, volume_id, tenant_id, deployment_id, hw, loc, a, b, span,
                                    gpus, units, hourly, monthly, total - charged))
                    total_amount += total - charged
                    seconds += span
                    charged = total
                meters.append((meter_id, end, ups, seconds, charged, final))
            elif final:
                meters.append((meter_id, start, ups, seconds, charged, True))
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
        INSERT INTO {table} (tenant_id, deployment_id, volume_id, hardware_type_id, location_id, day, amount, seconds,
                             gpu_seconds, gib_seconds, records)
        SELECT tenant_id, deployment_id, volume_id, hardware_type_id, location_id,
               (period_start AT TIME ZONE 'UTC')::date, sum(amount), sum(seconds), sum(seconds::bigint * gpus),
               sum(CASE WHEN volume_id IS NULL THEN 0 ELSE seconds::bigint * units END), count(*)
        FROM meter_records
        GROUP BY tenant_id, deployment_id, volume_id, hardware_type_id, location_id,
                 (period_start AT TIME ZONE 'UTC')::date
        ORDER BY deployment_id, volume_id, 6, location_id  -- one lock order for every pass
        ON CONFLICT ON CONSTRAINT usage_daily_unique_owner_day_location DO UPDATE SET
            amount = {table}.amount + EXCLUDED.amount, seconds = {table}.seconds + EXCLUDED.seconds,
            gpu_seconds = {table}.gpu_seconds + EXCLUDED.gpu_seconds,
            gib_seconds = {table}.gib_seconds + EXCLUDED.gib_seconds, records = {table}.records + EXCLUDED.records
    """)


def _meters_move(cursor) -> None:
    cursor.execute(f"""
        UPDATE {Meter._meta.db_table} AS m SET metered_to = v.metered_to, unit_price_seconds = v.ups,
               seconds = v.seconds, amount = v.amount, closed = v.closed
        FROM meter_moves AS v WHERE m.id = v.meter_id
    """)
