"""Volumes metered per second with a controlled clock (issue 26): a volume costs its provisioned
GiB x price per GiB-month / 730 per hour, from its creation to its deletion, through the same
meters, usage records, daily sums and ledger as replicas (the ledger check in conftest runs
after every test here too)."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Sum

from billing import link
from billing.models import LedgerEntry, Meter, UsageDaily, UsageRecord
from billing.prices import volume_price_set
from billing.selectors import tenant_balance
from billing.services import meter_volume_open, usage_close_intervals
from tests.billing.factories import RecordingKeeper, volume_delete, volume_for
from tests.factories import LocationFactory

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 10, 8, 0, 0, tzinfo=dt_timezone.utc)
MICRO = Decimal("0.000001")


def exact(*, gib: int, seconds: int, per_gib_month: Decimal = Decimal("0.10")) -> Decimal:
    """Worked out apart from the code under test: GiB x USD per GiB-month x seconds over the
    seconds of a 730-hour month, rounded once to six places."""
    return (Decimal(gib) * per_gib_month * seconds / (Decimal(730) * Decimal(3600))).quantize(
        MICRO, rounding=ROUND_HALF_UP)


def records_of(volume) -> list[tuple]:
    return list(UsageRecord.objects.filter(volume=volume).order_by("period_start")
                .values_list("period_start", "period_end", "seconds", "units", "price_per_gib_month", "amount"))


def every_minute(start: datetime, end: datetime) -> None:
    at = start
    while at + timedelta(minutes=1) < end:
        at += timedelta(minutes=1)
        usage_close_intervals(now=at)


def test_a_100_gib_volume_kept_3h17m5s_costs_exactly_that(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0, size_gib=100)
    end = T0 + timedelta(hours=3, minutes=17, seconds=5)
    every_minute(T0, end)
    volume_delete(volume, at=end)
    usage_close_intervals(now=end + timedelta(seconds=40))

    expected = exact(gib=100, seconds=11825)
    # 100 GiB x 0.10 USD / 730 h = 0.0136986.../h; x 11825/3600 h = 0.04499619... USD
    assert expected == Decimal("0.044996")
    assert UsageRecord.objects.filter(volume=volume).aggregate(s=Sum("amount"))["s"] == expected
    assert UsageRecord.objects.filter(volume=volume).aggregate(s=Sum("seconds"))["s"] == 11825
    assert UsageRecord.objects.filter(volume=volume).count() == 198  # 197 whole minutes and the last 5 s
    meter = Meter.objects.get(volume=volume)
    assert (meter.closed, meter.metered_to, meter.amount, meter.replica_id) == (True, end, expected, None)
    assert tenant_balance(tenant=acme) == Decimal("1000") - expected
    # Each record is a charge in the ledger, saying what it was for.
    charge = LedgerEntry.objects.filter(usage_record__volume=volume).order_by("seq").first()
    assert f"volume {volume.pk}: 60 s x 100 GiB at 0.1000/GiB-month" in charge.reason


def test_a_volume_across_midnight_is_cut_there_and_still_costs_exactly_its_seconds(acme, us_east):
    start = datetime(2026, 3, 10, 22, 0, 0, tzinfo=dt_timezone.utc)
    volume = volume_for(acme, location=us_east, created_at=start, size_gib=100)
    end = start + timedelta(hours=3, minutes=17, seconds=5)
    usage_close_intervals(now=start + timedelta(hours=2, minutes=30))  # one late pass over midnight
    volume_delete(volume, at=end)
    usage_close_intervals(now=end + timedelta(minutes=1))
    midnight = datetime(2026, 3, 11, tzinfo=dt_timezone.utc)
    assert [r[:3] for r in records_of(volume)] == [
        (start, midnight, 7200), (midnight, start + timedelta(hours=2, minutes=30), 1800),
        (start + timedelta(hours=2, minutes=30), end, 11825 - 9000)]
    assert Meter.objects.get(volume=volume).amount == exact(gib=100, seconds=11825) == Decimal("0.044996")
    days = dict(UsageDaily.objects.filter(volume=volume).values_list("day", "gib_seconds"))
    assert days == {start.date(): 100 * 7200, midnight.date(): 100 * (11825 - 7200)}


def test_a_pass_run_twice_or_late_charges_nothing_more_and_loses_nothing(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0, size_gib=50)
    usage_close_intervals(now=T0 + timedelta(minutes=10))
    usage_close_intervals(now=T0 + timedelta(minutes=10))  # a retried task
    usage_close_intervals(now=T0 + timedelta(minutes=5))  # a worker whose clock lags
    meter_volume_open(volume)  # opening again never moves where billing starts
    assert len(records_of(volume)) == 1
    usage_close_intervals(now=T0 + timedelta(hours=2, seconds=7))  # a pass that ran late
    assert sum(r[5] for r in records_of(volume)) == exact(gib=50, seconds=7207)
    meter = Meter.objects.get(volume=volume)
    assert (meter.metered_from, meter.seconds) == (T0, 7207)


def test_an_interval_is_never_written_twice_even_past_the_lock(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0)
    usage_close_intervals(now=T0 + timedelta(minutes=1))
    record = UsageRecord.objects.get(volume=volume)
    record.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        record.save()


def test_a_price_change_mid_way_splits_the_interval(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0, size_gib=100)
    change = T0 + timedelta(minutes=30)
    volume_price_set(location=None, price=Decimal("0.2000"), effective_from=change, now=T0)
    usage_close_intervals(now=T0 + timedelta(hours=1))
    (first, second) = records_of(volume)
    assert first == (T0, change, 1800, 100, Decimal("0.1000"), exact(gib=100, seconds=1800))
    assert second[:5] == (change, T0 + timedelta(hours=1), 1800, 100, Decimal("0.2000"))
    # The running total is rounded once: 1800 s at 0.10 and 1800 s at 0.20 are 3600 s at 0.15.
    assert first[5] + second[5] == exact(gib=100, seconds=3600, per_gib_month=Decimal("0.15"))


def test_a_location_of_its_own_price_wins_and_others_keep_the_default(acme, us_east):
    volume_price_set(location=us_east, price=Decimal("0.0800"), effective_from=T0, now=T0)
    here = volume_for(acme, location=us_east, created_at=T0, name="here")
    there = volume_for(acme, location=LocationFactory(slug="eu-west"), created_at=T0, name="there")
    usage_close_intervals(now=T0 + timedelta(hours=1))
    assert [r[4] for r in records_of(here)] == [Decimal("0.0800")]
    assert [r[4] for r in records_of(there)] == [Decimal("0.1000")]  # VOLUME_PRICE_PER_GIB_MONTH
    assert UsageRecord.objects.get(volume=here).location == us_east


def test_the_default_price_is_a_setting(acme, us_east, settings):
    settings.VOLUME_PRICE_PER_GIB_MONTH = "0.2500"
    volume = volume_for(acme, location=us_east, created_at=T0, size_gib=10)
    usage_close_intervals(now=T0 + timedelta(hours=73))
    assert Meter.objects.get(volume=volume).amount == exact(gib=10, seconds=73 * 3600, per_gib_month=Decimal("0.25"))


def test_deletion_closes_the_meter_and_nothing_accrues_after_it(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0)
    usage_close_intervals(now=T0 + timedelta(minutes=10))
    gone = T0 + timedelta(minutes=12, seconds=30, microseconds=600)
    assert volume_delete(volume, at=gone) == T0 + timedelta(minutes=12, seconds=30)  # whole seconds
    assert volume_delete(volume, at=gone + timedelta(hours=1)) == T0 + timedelta(minutes=12, seconds=30)  # stays
    usage_close_intervals(now=T0 + timedelta(hours=5))
    usage_close_intervals(now=T0 + timedelta(hours=6))
    meter = Meter.objects.get(volume=volume)
    assert (meter.closed, meter.metered_to, meter.seconds) == (True, T0 + timedelta(minutes=12, seconds=30), 750)
    assert meter.amount == exact(gib=100, seconds=750)


def test_a_deletion_asked_for_behind_a_pass_ends_where_that_pass_charged(acme, us_east):
    """The pass's clock ran ahead of the deleting request's: the volume is billed to where the
    pass charged (never a record past its end, never a negative interval)."""
    volume = volume_for(acme, location=us_east, created_at=T0)
    usage_close_intervals(now=T0 + timedelta(minutes=10))
    assert volume_delete(volume, at=T0 + timedelta(minutes=9)) == T0 + timedelta(minutes=10)
    usage_close_intervals(now=T0 + timedelta(minutes=11))
    assert Meter.objects.get(volume=volume).closed


def test_a_volume_deleted_in_the_second_it_was_made_costs_nothing(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0 + timedelta(microseconds=300))
    volume_delete(volume, at=T0 + timedelta(microseconds=900))
    usage_close_intervals(now=T0 + timedelta(minutes=1))
    assert not UsageRecord.objects.filter(volume=volume).exists() and Meter.objects.get(volume=volume).closed


def test_a_volume_the_metering_never_saw_is_metered_from_its_creation(acme, us_east):
    """The net: a volume made by a path that did not open its meter is found through the volumes
    app's keeper, and billed from its creation (to its deletion, if it is already gone)."""
    keeper = RecordingKeeper()
    volume = volume_for(acme, location=us_east, created_at=T0)
    Meter.objects.filter(volume=volume).delete()
    keeper.without_meter = [{"volume_id": volume.pk, "tenant_id": acme.pk, "created_at": T0,
                             "deleted_at": T0 + timedelta(minutes=30)}]
    link.register_volume_keeper(keeper)
    try:
        usage_close_intervals(now=T0 + timedelta(hours=1))
    finally:
        link.register_volume_keeper(None)
    meter = Meter.objects.get(volume=volume)
    assert (meter.metered_from, meter.metered_to, meter.closed) == (T0, T0 + timedelta(minutes=30), True)
    assert meter.amount == exact(gib=100, seconds=1800)


def test_a_meter_is_of_a_replica_or_of_a_volume_never_both_or_neither(acme, us_east):
    volume = volume_for(acme, location=us_east, created_at=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Meter.objects.create(tenant=acme, metered_from=T0, metered_to=T0)
    meter = Meter.objects.get(volume=volume)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(tenant=acme, volume=volume, location=us_east, period_start=T0,
                                   period_end=T0 + timedelta(seconds=1), seconds=1, gpus=0, units=100,
                                   price_per_unit_hour=Decimal("2.49"), amount=0)  # a GPU price on a volume
    assert meter.replica_id is None
