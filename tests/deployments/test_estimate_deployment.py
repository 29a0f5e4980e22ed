"""POST /api/v1/deployments/estimate: the create body → hourly cost, cost for duration_hours,
whether there is room now and where; nothing is created."""

from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.prices import price_set
from cloud.deployments.models import Deployment
from nodes import services as node_services
from tests.billing.factories import set_balance
from tests.conftest import client_for
from tests.deployments.conftest import URL
from tests.deployments.factories import NodeFactory
from tests.factories import HardwareTypeFactory, LocationFactory

pytestmark = pytest.mark.django_db
ESTIMATE = f"{URL}/estimate"


def gpu_node(hardware, location, hostname, *, free: int):
    node = NodeFactory(hostname=hostname, hardware_type=hardware, location=location, last_heartbeat=timezone.now())
    from nodes.models import Gpu

    Gpu.objects.bulk_create([Gpu(node=node, index=i, uuid=f"GPU-{hostname}-{i}", pci_bdf=f"0000:{i + 16:02x}:00.0",
                                 model="H100", memory_mib=81559) for i in range(free)])
    return node


def test_it_prices_the_create_body_and_creates_nothing(as_alice, body, h100):
    response = as_alice.post(ESTIMATE, body(gpus_per_container=8, replica_count=2, duration_hours=10), format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert (data["hardware_id"], data["gpus_per_container"], data["replica_count"]) == (h100.pk, 8, 2)
    assert data["price_per_gpu_hour"] == "2.5000"
    assert data["hourly_cost"] == "40.000000" and data["cost_for_duration"] == "400.000000"
    assert data["funds"]["balance"] == "1000.000000" and data["funds"]["covers_one_hour"] is True
    assert Deployment.objects.count() == 0


def test_the_estimate_is_what_create_then_says(as_alice, body):
    estimate = as_alice.post(ESTIMATE, body(gpus_per_container=4), format="json").json()
    created = as_alice.post(URL, body(gpus_per_container=4), format="json").json()
    assert estimate["hourly_cost"] == created["estimated_hourly_cost"]


def test_it_says_where_there_is_room_now(as_alice, body, h100, us_east):
    eu = LocationFactory(slug="eu-central")
    gpu_node(h100, us_east, "a", free=8)
    gpu_node(h100, us_east, "b", free=3)
    gpu_node(h100, eu, "c", free=4)
    data = as_alice.post(ESTIMATE, body(gpus_per_container=4, replica_count=3), format="json").json()
    assert data["capacity"]["available_now"] is True and data["capacity"]["replicas_placeable_now"] == 3
    where = {loc["location"]: (loc["nodes_with_room"], loc["replicas_placeable_now"]) for loc in data["capacity"]["locations"]}
    assert where == {"us-east": (1, 2), "eu-central": (1, 1)}
    only_eu = as_alice.post(ESTIMATE, body(gpus_per_container=4, replica_count=3, location_ids=[eu.pk]),
                            format="json").json()
    assert only_eu["capacity"]["available_now"] is False and only_eu["capacity"]["replicas_placeable_now"] == 1


def test_silent_or_cordoned_nodes_are_no_room(as_alice, body, h100, us_east):
    silent = gpu_node(h100, us_east, "quiet", free=8)
    silent.last_heartbeat = datetime(2020, 1, 1, tzinfo=dt_timezone.utc)
    silent.save()
    cordoned = gpu_node(h100, us_east, "resting", free=8)
    node_services.node_cordon(node_id=cordoned.pk)
    data = as_alice.post(ESTIMATE, body(gpus_per_container=1), format="json").json()
    assert data["capacity"] == {"available_now": False, "replicas_placeable_now": 0, "locations": []}


def test_a_location_price_is_quoted_at_its_highest(as_alice, body, h100, us_east):
    price_set(hardware_type=h100, location=us_east, price=Decimal("3.1000"))
    data = as_alice.post(ESTIMATE, body(gpus_per_container=1), format="json").json()
    assert data["price_per_gpu_hour"] == "3.1000" and data["hourly_cost"] == "3.100000"
    elsewhere = LocationFactory(slug="us-west")
    cheaper = as_alice.post(ESTIMATE, body(gpus_per_container=1, location_ids=[elsewhere.pk]), format="json").json()
    assert cheaper["hourly_cost"] == "2.500000"


def test_without_a_body_the_cheapest_fitting_hardware_is_quoted(as_alice, h100):
    HardwareTypeFactory(slug="pricey", price_per_gpu_hour=Decimal("9.0000"))
    data = as_alice.post(ESTIMATE, {}, format="json").json()
    assert (data["hardware"], data["gpus_per_container"], data["hourly_cost"]) == ("h100", 1, "2.500000")


def test_it_says_when_create_would_be_refused_for_funds(as_alice, acme, body):
    set_balance(acme, Decimal("4"))
    funds = as_alice.post(ESTIMATE, body(gpus_per_container=2), format="json").json()["funds"]
    assert (funds["covers_one_hour"], funds["hours_covered"], funds["spend_limit_reached"]) == (False, "0.80", False)
    assert as_alice.post(URL, body(gpus_per_container=2), format="json").status_code == 402


def test_it_counts_what_the_tenant_already_runs_as_create_does(as_alice, acme, body):
    """Issue 23: the estimate and the create answer agree once other deployments hold the balance."""
    set_balance(acme, Decimal("10"))
    for _ in range(3):
        assert as_alice.post(URL, body(), format="json").status_code == 201  # 3 x 2.50/hour
    funds = as_alice.post(ESTIMATE, body(gpus_per_container=2), format="json").json()["funds"]
    assert (funds["committed_hourly_cost"], funds["covers_one_hour"], funds["hours_covered"]) == (
        "7.500000", False, "0.80")
    assert as_alice.post(URL, body(gpus_per_container=2), format="json").status_code == 402
    assert as_alice.post(ESTIMATE, body(), format="json").json()["funds"]["covers_one_hour"] is True
    assert as_alice.post(URL, body(), format="json").status_code == 201


def test_the_body_is_validated_as_create_validates_it(as_alice, body):
    response = as_alice.post(ESTIMATE, body(gpus_per_container=3), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "gpus_per_container"
    assert as_alice.post(ESTIMATE, {"replica_count": "2"}, format="json").status_code == 400


def test_a_read_only_token_may_estimate(alice, body):
    response = client_for(alice, scopes="deployments:read", tenant="acme").post(ESTIMATE, body(), format="json")
    assert response.status_code == 200
