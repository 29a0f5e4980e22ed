"""Volumes in what a customer reads (issue 26): the usage API (`group_by=volume` too), the CSV
statement, the balance's burn rate; and in what operators and estimates read: the price book's
admin page, the report, a volume's own hourly cost and a deployment's per-replica volumes."""

import csv
import io
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.urls import reverse

from billing.estimate import per_replica_volumes_estimate, volume_estimate
from billing.models import UsageRecord, VolumePrice
from billing.prices import volume_price_set
from billing.reports import billing_report
from billing.services import usage_close_intervals
from tests.billing.factories import heartbeat, run_on, volume_delete, volume_for
from tests.deployments.factories import deployment_for
from tests.factories import LocationFactory, UserFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/billing"
MARCH = datetime(2026, 3, 31, 22, 0, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def used(acme, h100, node, us_east):
    """acme ran 1 GPU from 22:00 on 31 March for an hour, and kept a 100 GiB volume from then
    for 3 h (into April) and a 10 GiB one from then on."""
    train = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1, name="train")
    run_on(train.replicas.get(), node=node, started_at=MARCH)
    weights = volume_for(acme, location=us_east, created_at=MARCH, size_gib=100, name="weights")
    scratch = volume_for(acme, location=us_east, created_at=MARCH, size_gib=10, name="scratch")
    heartbeat(node, MARCH + timedelta(hours=1))
    usage_close_intervals(now=MARCH + timedelta(hours=1))
    train_replica = train.replicas.get()
    train_replica.state, train_replica.stopped_at = "stopped", MARCH + timedelta(hours=1)
    train_replica.save()
    volume_delete(weights, at=MARCH + timedelta(hours=3))
    usage_close_intervals(now=MARCH + timedelta(hours=4))
    return {"train": train, "weights": weights, "scratch": scratch}


def usage(client, **query) -> dict:
    response = client.get(f"{BASE}/usage", {"from": "2026-03-01", "to": "2026-04-30", **query})
    assert response.status_code == 200, response.content
    return response.json()


def test_usage_by_volume_lists_each_volume_with_its_gib_hours(as_alice, used):
    body = usage(as_alice, group_by="volume")
    rows = {row["volume_name"]: row for row in body["usage"]}
    assert set(rows) == {"weights", "scratch"}
    weights = rows["weights"]
    assert (weights["kind"], weights["volume_id"], weights["deployment_id"], weights["hardware"]) == (
        "volume", str(used["weights"].pk), None, None)
    assert (weights["seconds"], weights["gib_hours"], weights["gpu_hours"]) == (3 * 3600, "300.000000", "0.000000")
    assert weights["amount"] == "0.041096"  # 300 GiB-hours x 0.10 / 730
    assert rows["scratch"]["gib_hours"] == "40.000000" and rows["scratch"]["amount"] == "0.005479"
    assert body["totals"]["volumes_amount"] == "0.046575"  # rounded per record, summed: 0.041096 + 0.005479


def test_usage_by_deployment_or_day_carries_the_volumes_rows_after_the_deployments(as_alice, used):
    body = usage(as_alice)
    assert [(row["kind"], row["deployment_name"] or row["volume_name"]) for row in body["usage"]] == [
        ("deployment", "train"), ("volume", "weights"), ("volume", "scratch")]
    totals = body["totals"]
    assert Decimal(totals["amount"]) == sum(Decimal(row["amount"]) for row in body["usage"])
    assert totals["amount"] == str(UsageRecord.objects.aggregate(s=Sum("amount"))["s"])
    by_day = usage(as_alice, group_by="day")["usage"]
    assert {(row["day"], row["volume_name"]) for row in by_day if row["kind"] == "volume"} == {
        ("2026-03-31", "weights"), ("2026-04-01", "weights"), ("2026-03-31", "scratch"), ("2026-04-01", "scratch")}
    by_hardware = usage(as_alice, group_by="hardware")["usage"]
    assert [row["hardware"] for row in by_hardware] == ["h100", None, None]


@pytest.mark.parametrize("group_by", ["volumes", "Volume", "volume;", "", "deployment,volume"])
def test_an_unknown_grouping_is_a_400_naming_it(as_alice, group_by):
    response = as_alice.get(f"{BASE}/usage", {"group_by": group_by})
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["group_by"]


def test_another_tenants_volumes_are_not_in_my_usage(as_mallory, used):
    assert usage(as_mallory, group_by="volume")["usage"] == []


def test_the_statement_has_a_line_per_volume_record(as_alice, used):
    body = b"".join(as_alice.get(f"{BASE}/statements/2026-04.csv").streaming_content).decode()
    lines = list(csv.DictReader(io.StringIO(body)))
    volume_lines = [line for line in lines if line["volume_id"]]
    assert len(volume_lines) == UsageRecord.objects.filter(volume__isnull=False, period_start__month=4).count() == 2
    weights = next(line for line in volume_lines if line["volume_name"] == "weights")
    assert (weights["deployment_id"], weights["replica_id"], weights["hardware"], weights["price_per_unit_hour"]) == (
        "", "", "", "")
    assert (weights["units"], weights["seconds"], weights["price_per_gib_month"], weights["location"]) == (
        "100", "3600", "0.1000", "us-east")
    assert weights["amount"] == "0.013699"
    total = sum(Decimal(line["amount"]) for line in lines)
    assert str(total) == usage(as_alice, **{"from": "2026-04-01", "to": "2026-04-30"})["totals"]["amount"]


def test_the_burn_rate_counts_live_volumes(as_alice, acme, h100, node, us_east):
    now = datetime.now(dt_timezone.utc)
    run_on(deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8).replicas.get(), node=node,
           started_at=now - timedelta(minutes=1))
    volume_for(acme, location=us_east, created_at=now - timedelta(minutes=1), size_gib=100)
    gone = volume_for(acme, location=us_east, created_at=now - timedelta(minutes=1), size_gib=500, name="gone")
    volume_delete(gone, at=now)  # a deleted volume costs nothing more
    body = as_alice.get(f"{BASE}/balance").json()
    assert body["burn_rate_per_hour"] == "19.933699"  # 8 x 2.49 + 100 x 0.10 / 730 (0.0136986...)


def test_a_volume_alone_has_a_burn_rate_and_hours_left(as_alice, acme, us_east):
    volume_for(acme, location=us_east, created_at=datetime.now(dt_timezone.utc), size_gib=730)
    body = as_alice.get(f"{BASE}/balance").json()
    assert (body["burn_rate_per_hour"], body["hours_left"]) == ("0.100000", "10000.00")


def test_a_volumes_own_cost_is_its_gib_at_the_locations_price(us_east):
    volume_price_set(location=us_east, price=Decimal("0.0730"), now=MARCH, effective_from=MARCH)
    assert volume_estimate(size_gib=100, location_id=us_east.pk, at=MARCH) == {
        "size_gib": 100, "price_per_gib_month": "0.0730", "hourly_cost": "0.010000", "monthly_cost": "7.300000"}


def test_a_deployments_per_replica_volumes_are_quoted_at_the_dearest_location(us_east):
    eu = LocationFactory(slug="eu-west")
    volume_price_set(location=eu, price=Decimal("0.1460"), now=MARCH, effective_from=MARCH)
    quote = per_replica_volumes_estimate(sizes_gib=[100, 50], replica_count=2, location_ids=[us_east.pk, eu.pk],
                                         at=MARCH)
    assert quote == {"volumes": 4, "gib": 300, "price_per_gib_month": "0.1460", "hourly_cost": Decimal("0.060000")}
    assert per_replica_volumes_estimate(sizes_gib=[100], replica_count=1, location_ids=[us_east.pk], at=MARCH)[
        "hourly_cost"] == Decimal("0.013699")


def test_operators_set_a_volume_price_per_location_in_the_admin(client, us_east):
    operator = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(operator)
    page = client.get(reverse("admin:billing_volumeprice_changelist"))
    assert page.status_code == 200 and b"us-east 0.1000 USD" in page.content  # the default, before any row
    at = datetime.now(dt_timezone.utc).replace(microsecond=0) + timedelta(hours=1)
    response = client.post(reverse("admin:billing_volumeprice_add"), {
        "location": us_east.pk, "price_per_gib_month": "0.0800", "effective_from_0": at.strftime("%Y-%m-%d"),
        "effective_from_1": at.strftime("%H:%M:%S"), "reason": "cheaper disks"})
    assert response.status_code == 302, response.content[:2000]
    price = VolumePrice.objects.get()
    assert (price.location, price.price_per_gib_month, price.created_by, price.reason) == (
        us_east, Decimal("0.0800"), operator, "cheaper disks")
    past = client.post(reverse("admin:billing_volumeprice_add"), {
        "location": us_east.pk, "price_per_gib_month": "0.0100", "effective_from_0": "2020-01-01",
        "effective_from_1": "00:00:00", "reason": "oops"})
    assert past.status_code == 200 and b"never in the past" in past.content
    assert VolumePrice.objects.count() == 1


def test_the_report_shows_volume_storage_beside_the_hardware(used):
    report = billing_report(first=MARCH.date(), last=MARCH.date() + timedelta(days=1))
    (volumes,) = [row for row in report["hardware"] if row["hardware"] == "volumes"]
    assert volumes["gpu_hours"] == Decimal("340.00")  # 300 + 40 GiB-hours
    assert sum(row["amount"] for row in report["hardware"]) == report["total_amount"]
