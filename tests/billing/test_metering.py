"""Per-second metering with a controlled clock: every pass is `usage_close_intervals(now=...)`,
replicas run when the test says they did (their node's heartbeat says how far they may be
metered while they run)."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db.models import ProtectedError, Sum

from billing.models import LedgerEntry, Meter, MeterRun, UsageDaily, UsageRecord
from billing.prices import price_set
from billing.selectors import tenant_balance
from billing.services import usage_close_intervals
from cloud.deployments import selectors
from cloud.deployments.models import Deployment, Replica
from cloud.deployments.serializers import DeploymentOutput
from cloud.deployments.services import deployment_delete, deployment_restart, node_lost
from cloud.deployments.services.agents import AgentSink
from protocol.wire import ReplicaReport
from tests.billing.conftest import PRICE
from tests.billing.factories import heartbeat, run_on, stop_at
from tests.deployments.factories import NodeFactory, deployment_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 10, 8, 0, 0, tzinfo=dt_timezone.utc)
MICRO = Decimal("0.000001")


def exact(*, seconds: int, units: int, price: Decimal = PRICE) -> Decimal:
    return (price * units * seconds / Decimal(3600)).quantize(MICRO, rounding=ROUND_HALF_UP)


def meter_pass(node, at: datetime):
    """The node was heard from at `at`, and the minute's pass runs then."""
    heartbeat(node, at)
    return usage_close_intervals(now=at)


def records_of(replica) -> list[tuple]:
    return list(UsageRecord.objects.filter(replica=replica).order_by("period_start")
                .values_list("period_start", "period_end", "seconds", "price_per_unit_hour", "amount"))


def test_a_replica_running_3h17m5s_on_8_gpus_costs_exactly_that(acme, h100, node, as_alice):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0)
    end = T0 + timedelta(hours=3, minutes=17, seconds=5)
    at = T0
    while at + timedelta(minutes=1) < end:  # every minute, as beat runs it
        at += timedelta(minutes=1)
        meter_pass(node, at)
    stop_at(replica, at=end)
    meter_pass(node, end + timedelta(seconds=40))

    expected = exact(seconds=11825, units=8)
    assert expected == Decimal("65.431667")
    assert UsageRecord.objects.filter(replica=replica).aggregate(s=Sum("amount"))["s"] == expected
    assert UsageRecord.objects.filter(replica=replica).aggregate(s=Sum("seconds"))["s"] == 11825
    assert UsageRecord.objects.filter(replica=replica).count() == 198  # 197 whole minutes and the last 5 s
    meter = Meter.objects.get(replica=replica)
    assert (meter.closed, meter.metered_to, meter.amount) == (True, end, expected)
    assert tenant_balance(tenant=acme) == Decimal("1000") - expected
    shown = as_alice.get(f"/api/v1/deployments/{deployment.pk}").json()["deployment"]
    assert shown["total_cost"] == "65.431667"


def test_a_price_change_mid_run_splits_the_interval(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0)
    change = T0 + timedelta(minutes=30)
    price_set(hardware_type=h100, location=None, price=Decimal("2.9900"), effective_from=change, now=T0)
    meter_pass(node, T0 + timedelta(hours=1))
    assert records_of(replica) == [
        (T0, change, 1800, PRICE, exact(seconds=1800, units=1)),
        (change, T0 + timedelta(hours=1), 1800, Decimal("2.9900"),
         exact(seconds=3600, units=1, price=(PRICE + Decimal("2.99")) / 2) - exact(seconds=1800, units=1)),
    ]
    # The catalog's list price follows the price book once the change is in effect.
    h100.refresh_from_db()
    assert h100.price_per_gpu_hour == Decimal("2.9900")


def test_a_price_change_never_rewrites_what_was_metered(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0)
    meter_pass(node, T0 + timedelta(minutes=10))
    before = records_of(replica)
    price_set(hardware_type=h100, location=None, price=Decimal("9.0000"), now=T0 + timedelta(minutes=10))
    meter_pass(node, T0 + timedelta(minutes=20))
    after = records_of(replica)
    assert after[:1] == before
    assert after[1][3] == Decimal("9.0000")


def test_a_location_of_its_own_price_wins_over_the_every_location_price(acme, h100, node, us_east):
    price_set(hardware_type=h100, location=us_east, price=Decimal("3.0000"), effective_from=T0, now=T0)
    elsewhere = NodeFactory(hostname="gpu-eu", hardware_type=h100)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1, replica_count=2)
    here, there = deployment.replicas.order_by("ordinal")
    run_on(here, node=node, started_at=T0)
    run_on(there, node=elsewhere, started_at=T0)
    heartbeat(elsewhere, T0 + timedelta(hours=1))
    meter_pass(node, T0 + timedelta(hours=1))
    assert [r[3] for r in records_of(here)] == [Decimal("3.0000")]
    assert [r[3] for r in records_of(there)] == [PRICE]
    assert UsageRecord.objects.get(replica=here).location == us_east


def test_a_lost_node_stops_the_meter_at_its_last_heartbeat(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0)
    meter_pass(node, T0 + timedelta(minutes=1))
    last_word = T0 + timedelta(minutes=1, seconds=30)
    heartbeat(node, last_word)
    usage_close_intervals(now=T0 + timedelta(minutes=2))  # silent since: metered to its last word only
    assert Meter.objects.get(replica=replica).metered_to == last_word
    node_lost(node_id=node.pk)
    replica.refresh_from_db()
    assert (replica.state, replica.stopped_at) == ("lost", last_word)
    usage_close_intervals(now=T0 + timedelta(minutes=10))
    meter = Meter.objects.get(replica=replica)
    assert (meter.closed, meter.seconds, meter.amount) == (True, 90, exact(seconds=90, units=8))


def test_restart_and_replacement_meter_each_incarnation_once(acme, h100, node, us_east):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    first = run_on(deployment.replicas.get(), node=node, started_at=T0)
    meter_pass(node, T0 + timedelta(minutes=1))
    deployment_restart(tenant=acme, actor=None, deployment_id=deployment.pk)
    stop_at(first, at=T0 + timedelta(minutes=2))  # the node reports the old VM gone
    second = run_on(deployment.replicas.get(generation=2), node=node, started_at=T0 + timedelta(minutes=2, seconds=10))
    meter_pass(node, T0 + timedelta(minutes=3))
    meter_pass(node, T0 + timedelta(minutes=3))  # the same pass again
    usage_close_intervals(now=T0 + timedelta(minutes=2))  # a late one, from before
    # The node goes silent at 3:00; the replacement runs elsewhere from 3:40.
    other = NodeFactory(hostname="gpu-2", hardware_type=h100, location=us_east)
    heartbeat(node, T0 + timedelta(minutes=3))
    node_lost(node_id=node.pk)
    third = run_on(deployment.replicas.get(generation=3), node=other, started_at=T0 + timedelta(minutes=3, seconds=40))
    meter_pass(other, T0 + timedelta(minutes=5))

    per_replica = dict(Meter.objects.values_list("replica__generation", "seconds"))
    assert per_replica == {1: 120, 2: 50, 3: 80}
    for replica in (first, second, third):
        starts = [r[0] for r in records_of(replica)]
        assert len(starts) == len(set(starts))
        spans = records_of(replica)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "gaps or overlaps between records"
    assert UsageRecord.objects.aggregate(s=Sum("amount"))["s"] == sum(
        (exact(seconds=s, units=1) for s in (120, 50, 80)), Decimal("0"))


def test_an_incarnation_that_ends_between_passes_is_still_charged(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = deployment.replicas.get()
    Replica.objects.filter(pk=replica.pk).update(node=node, state="booting")
    sink = AgentSink()
    sink.report(node_id=node.pk, report=ReplicaReport(replica_id=str(replica.uid), state="running", host_port=30000))
    assert Meter.objects.filter(replica=replica).exists()  # opened in the same transaction as `running`
    sink.report(node_id=node.pk, report=ReplicaReport(replica_id=str(replica.uid), state="failed", exit_code=1))
    replica.refresh_from_db()
    usage_close_intervals(now=replica.stopped_at + timedelta(seconds=5))
    meter = Meter.objects.get(replica=replica)
    ran = int((replica.stopped_at.replace(microsecond=0) - meter.opened_at.replace(microsecond=0)).total_seconds())
    assert meter.closed and meter.seconds in (max(ran - 1, 0), ran)


def test_intervals_are_split_at_midnight_utc(acme, h100, node):
    evening = datetime(2026, 3, 31, 23, 59, 30, tzinfo=dt_timezone.utc)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = run_on(deployment.replicas.get(), node=node, started_at=evening)
    meter_pass(node, evening + timedelta(minutes=2))  # a late pass: one interval, two days (and months)
    midnight = datetime(2026, 4, 1, tzinfo=dt_timezone.utc)
    assert [(r[0], r[1]) for r in records_of(replica)] == [(evening, midnight), (midnight, evening + timedelta(minutes=2))]
    assert sorted(UsageDaily.objects.values_list("day", "seconds")) == [(evening.date(), 30), (midnight.date(), 90)]


def test_partial_seconds_are_not_charged(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0 + timedelta(microseconds=300_000))
    stop_at(replica, at=T0 + timedelta(seconds=10, microseconds=900_000))
    usage_close_intervals(now=T0 + timedelta(minutes=1))
    assert records_of(replica)[0][:3] == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=10), 9)


def test_total_cost_is_the_records_and_the_open_interval_up_to_now(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8)
    run_on(deployment.replicas.get(), node=node, started_at=T0)
    meter_pass(node, T0 + timedelta(minutes=1))
    shown = DeploymentOutput(selectors.deployments_for(tenant=acme, now=T0 + timedelta(seconds=90)).get()).data
    assert shown["total_cost"] == str(exact(seconds=90, units=8))
    assert str(exact(seconds=60, units=8)) == str(UsageRecord.objects.get().amount)


def test_each_record_is_a_charge_in_the_same_pass(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    run_on(deployment.replicas.get(), node=node, started_at=T0)
    run = meter_pass(node, T0 + timedelta(minutes=1))
    record = UsageRecord.objects.get()
    charge = LedgerEntry.objects.get(usage_record=record)
    assert (charge.kind, charge.amount, charge.actor_name) == ("charge", -record.amount, "system:metering")
    assert (run.records, run.amount) == (1, record.amount)
    assert MeterRun.objects.count() == 1


def test_deleting_a_deployment_keeps_its_usage_and_nothing_can_cascade_it_away(acme, h100, node):
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = run_on(deployment.replicas.get(), node=node, started_at=T0)
    meter_pass(node, T0 + timedelta(minutes=5))
    deployment_delete(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert UsageRecord.objects.filter(deployment_id=deployment.pk).count() == 1
    for delete in (lambda: Deployment.objects.filter(pk=deployment.pk).delete(),
                   lambda: Replica.objects.filter(pk=replica.pk).delete(),
                   lambda: acme.delete()):
        with pytest.raises(ProtectedError):
            delete()
    assert UsageRecord.objects.filter(deployment_id=deployment.pk).count() == 1
    assert LedgerEntry.objects.filter(tenant=acme, kind="charge").count() == 1


def test_nothing_running_is_a_cheap_empty_pass(acme, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        run = usage_close_intervals(now=T0)
    assert (run.meters, run.records) == (0, 0)
