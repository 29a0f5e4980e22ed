"""Tenant quotas (429) and funds (402) at create, under the tenant row lock."""

from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageDaily
from cloud.deployments.models import Deployment
from tests.billing.factories import set_balance
from tests.conftest import client_for
from tests.deployments.conftest import URL, post_concurrently
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db


def test_max_gpus_counts_live_deployments_including_this_one(as_alice, acme, body):
    acme.max_gpus = 8
    acme.save()
    assert as_alice.post(URL, body(gpus_per_container=4, replica_count=1), format="json").status_code == 201
    response = as_alice.post(URL, body(gpus_per_container=4, replica_count=2), format="json")
    assert response.status_code == 429
    assert response.json()["quota"] == "max_gpus" and "max_gpus" in response.json()["detail"]
    assert as_alice.post(URL, body(gpus_per_container=4, replica_count=1), format="json").status_code == 201


def test_stopped_deployments_hold_no_gpus(as_alice, acme, body):
    acme.max_gpus = 8
    acme.save()
    first = as_alice.post(URL, body(gpus_per_container=8), format="json").json()["deployment"]
    as_alice.post(f"{URL}/{first['id']}/stop")
    assert as_alice.post(URL, body(gpus_per_container=8), format="json").status_code == 201


def test_max_deployments(as_alice, acme, body):
    acme.max_deployments = 2
    acme.save()
    for _ in range(2):
        assert as_alice.post(URL, body(), format="json").status_code == 201
    response = as_alice.post(URL, body(), format="json")
    assert response.status_code == 429 and response.json()["quota"] == "max_deployments"


def test_a_balance_below_one_hour_is_402(as_alice, acme, body):
    set_balance(acme, Decimal("4.99"))
    response = as_alice.post(URL, body(gpus_per_container=2), format="json")  # 2 x 2.50 = 5.00/hour
    assert response.status_code == 402
    assert response.json()["estimated_hourly_cost"] == "5.000000"
    assert Deployment.objects.count() == 0


def test_a_reached_spend_limit_is_402(as_alice, acme, body):
    other = deployment_for(acme)
    acme.spend_limit = Decimal("10")
    acme.save()
    now = timezone.now()
    UsageDaily.objects.create(tenant=acme, deployment=other, hardware_type=other.hardware_type, day=now.date(),
                              amount=Decimal("10"), seconds=3600, gpu_seconds=3600, records=1)
    response = as_alice.post(URL, body(), format="json")
    assert response.status_code == 402 and "spend limit" in response.json()["detail"]


def test_quotas_are_per_tenant(as_alice, as_mallory, acme, evil, body):
    acme.max_deployments = 1
    acme.save()
    as_alice.post(URL, body(), format="json")
    assert as_mallory.post(URL, body(), format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_cannot_both_squeeze_under_the_quota(alice, acme, body):
    acme.max_deployments = 1
    acme.save()
    codes = [r.status_code for r in post_concurrently(alice, body(), times=3)]
    assert sorted(codes) == [201, 429, 429]
    assert Deployment.objects.count() == 1
