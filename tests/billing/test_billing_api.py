"""`/api/v1/billing/...`: balance, usage, statements and limits, as a customer's token sees them."""

import csv
import io
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.models import UsageRecord
from billing.services import usage_close_intervals
from tests.billing.conftest import PRICE
from tests.billing.factories import heartbeat, run_on, set_balance, stop_at
from tests.conftest import client_for
from tests.deployments.factories import NodeFactory, deployment_for
from tests.factories import HardwareTypeFactory

pytestmark = pytest.mark.django_db
BASE = "/api/v1/billing"
MARCH = datetime(2026, 3, 31, 22, 0, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def used(acme, h100, node):
    """Two deployments of acme, metered every 10 minutes: `big` ran 8 GPUs from 22:00 on 31 March
    for 3 h (into April), `small` 1 GPU from midnight for 90 minutes."""
    big = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8, name="big")
    small = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1, name="small")
    run_on(big.replicas.get(), node=node, started_at=MARCH)
    run_on(small.replicas.get(), node=node, started_at=MARCH + timedelta(hours=2))
    at = MARCH
    while at < MARCH + timedelta(hours=3, minutes=30):
        at += timedelta(minutes=10)
        if at == MARCH + timedelta(hours=3):
            stop_at(big.replicas.get(), at=at)
        heartbeat(node, at)
        usage_close_intervals(now=at)
    return {"big": big, "small": small}


def test_balance_shows_the_ledger_spend_limit_burn_rate_and_hours_left(as_alice, acme, h100, node):
    set_balance(acme, Decimal("100"))
    acme.spend_limit = Decimal("500")
    acme.save()
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8)
    run_on(deployment.replicas.get(), node=node, started_at=datetime.now(dt_timezone.utc) - timedelta(minutes=1))
    body = as_alice.get(f"{BASE}/balance").json()
    assert body["balance"] == "100.000000" and body["currency"] == "USD"
    assert body["spend_limit"] == "500.000000" and body["spend_this_month"] == "0.000000"
    assert body["burn_rate_per_hour"] == "19.920000"  # 8 x 2.49
    assert body["hours_left"] == "5.02"


def test_balance_without_anything_running_has_no_hours_left(as_alice):
    body = as_alice.get(f"{BASE}/balance").json()
    assert (body["burn_rate_per_hour"], body["hours_left"], body["spend_limit"]) == ("0.000000", None, None)


def test_usage_by_deployment_carries_amount_seconds_and_gpu_hours(as_alice, used):
    body = as_alice.get(f"{BASE}/usage", {"from": "2026-03-01", "to": "2026-04-30"}).json()
    rows = {row["deployment_name"]: row for row in body["usage"]}
    assert rows["big"]["seconds"] == 3 * 3600 and rows["big"]["gpu_hours"] == "24.000000"
    assert rows["big"]["amount"] == "59.760000"  # 24 GPU-hours x 2.49
    assert rows["small"]["seconds"] == 90 * 60 and rows["small"]["amount"] == "3.735000"
    assert rows["big"]["deployment_id"] == str(used["big"].pk) and rows["big"]["hardware"] == "h100"
    assert body["totals"] == {"amount": "63.495000", "seconds": 16200, "gpu_hours": "25.500000",
                              "volumes_amount": "0.000000", "gib_hours": "0.000000"}
    assert body["pagination"] == {"page": 1, "limit": 20, "total": 2, "total_pages": 1}


def test_usage_by_day_splits_at_midnight_utc(as_alice, used):
    body = as_alice.get(f"{BASE}/usage", {"from": "2026-03-01", "to": "2026-04-30", "group_by": "day"}).json()
    by_day = {}
    for row in body["usage"]:
        by_day.setdefault(row["day"], 0)
        by_day[row["day"]] += row["seconds"]
    # big ran 22:00-01:00 (2 h on 31 March, 1 h on 1 April); small 00:00-01:30 on 1 April.
    assert by_day == {"2026-03-31": 7200, "2026-04-01": 3600 + 5400}


def test_usage_defaults_to_this_month_and_pages(as_alice, acme, h100, node):
    now = datetime.now(dt_timezone.utc).replace(microsecond=0)
    for i in range(3):
        deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1, name=f"d{i}")
        run_on(deployment.replicas.get(), node=node, started_at=now - timedelta(minutes=5 + i))
    heartbeat(node, now)
    usage_close_intervals(now=now)
    body = as_alice.get(f"{BASE}/usage", {"limit": 2, "page": 2}).json()
    assert body["from"] == now.replace(day=1).date().isoformat()
    assert len(body["usage"]) == 1 and body["pagination"]["total"] == 3
    assert body["totals"]["seconds"] == 5 * 60 + 6 * 60 + 7 * 60


@pytest.mark.parametrize("query,field", [
    ({"group_by": "tenant"}, "group_by"),
    ({"from": "2026-03-05", "to": "2026-03-01"}, "to"),
    ({"from": "yesterday"}, "from"),
    ({"from": "2025-01-01", "to": "2026-03-01"}, "to"),
])
def test_usage_refuses_a_bad_query_naming_the_parameter(as_alice, query, field):
    response = as_alice.get(f"{BASE}/usage", query)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_the_statement_has_a_line_per_record_and_its_total_is_the_usage_apis(as_alice, used):
    response = as_alice.get(f"{BASE}/statements/2026-03.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    march = UsageRecord.objects.filter(period_start__month=3)
    assert len(lines) == march.count()
    assert {line["deployment_id"] for line in lines} == {str(used["big"].pk)}  # small started in April
    assert all(len(line["amount"].split(".")[1]) == 6 for line in lines)
    total = sum(Decimal(line["amount"]) for line in lines)
    api = as_alice.get(f"{BASE}/usage", {"from": "2026-03-01", "to": "2026-03-31"}).json()["totals"]["amount"]
    assert str(total) == api == str(march.aggregate(s=Sum("amount"))["s"])
    april = b"".join(as_alice.get(f"{BASE}/statements/2026-04.csv").streaming_content).decode()
    april_total = sum(Decimal(line["amount"]) for line in csv.DictReader(io.StringIO(april)))
    assert april_total == Decimal(as_alice.get(f"{BASE}/usage", {"from": "2026-04-01", "to": "2026-04-30"}).json()[
        "totals"]["amount"]) > 0


def test_a_statement_for_a_month_that_is_not_one_is_a_400(as_alice):
    response = as_alice.get(f"{BASE}/statements/2026-13.csv")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "month"


def test_billing_needs_the_billing_scope(alice):
    response = client_for(alice, scopes="deployments:read", tenant="acme").get(f"{BASE}/balance")
    assert response.status_code == 403 and "billing:read" in response.json()["detail"]


def test_owners_and_admins_set_the_spend_limit(as_alice, acme):
    response = as_alice.patch(f"{BASE}/limits", {"monthly_spend_limit": "250.50"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"monthly_spend_limit": "250.500000", "spend_this_month": "0.000000"}
    acme.refresh_from_db()
    assert acme.spend_limit == Decimal("250.5")
    assert as_alice.patch(f"{BASE}/limits", {"monthly_spend_limit": None}, format="json").json()[
        "monthly_spend_limit"] is None


def test_a_member_may_read_the_limit_but_not_change_it(as_bob, acme):
    assert as_bob.get(f"{BASE}/limits").status_code == 200
    response = as_bob.patch(f"{BASE}/limits", {"monthly_spend_limit": "1"}, format="json")
    assert response.status_code == 403
    assert "owner or admin" in response.json()["detail"] and "member" in response.json()["detail"]
    acme.refresh_from_db()
    assert acme.spend_limit is None


@pytest.mark.parametrize("value", [250, "-1", "lots", "1.0000001"])
def test_a_spend_limit_is_a_non_negative_decimal_string(as_alice, value):
    response = as_alice.patch(f"{BASE}/limits", {"monthly_spend_limit": value}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "monthly_spend_limit"


def test_an_unknown_limits_field_is_a_400(as_alice):
    response = as_alice.patch(f"{BASE}/limits", {"monthly_limit": "5"}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "monthly_limit"


def test_amounts_on_a_cpu_only_kind_are_per_slot_hour(as_alice, acme):
    cpu = HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=4, allowed_gpu_counts=[0],
                              price_per_gpu_hour=Decimal("0.0200"))
    node = NodeFactory(hostname="cpu-1", hardware_type=cpu)
    deployment = deployment_for(acme, hardware_id=cpu.pk, gpus_per_container=0)
    run_on(deployment.replicas.get(), node=node, started_at=MARCH)
    heartbeat(node, MARCH + timedelta(hours=2))
    usage_close_intervals(now=MARCH + timedelta(hours=2))
    row = as_alice.get(f"{BASE}/usage", {"from": "2026-03-01", "to": "2026-03-31"}).json()["usage"][0]
    assert (row["amount"], row["gpu_hours"], row["seconds"]) == ("0.040000", "0.000000", 7200)
    assert PRICE  # (the GPU price is not involved)
