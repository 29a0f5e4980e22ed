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


# -- issue 23: the balance covers an hour of the whole tenant, not of one request -------------------
# h100 is 2.50 USD per GPU-hour (tests/deployments/conftest.py): 10 USD covers four 1-GPU hours.


@pytest.fixture
def roomy(acme):
    """Quotas far above what the balance covers, so only the funds check can refuse."""
    acme.max_gpus, acme.max_deployments = 64, 64
    acme.save()
    set_balance(acme, Decimal("10"))
    return acme


def test_the_balance_must_cover_an_hour_of_everything_the_tenant_would_run(as_alice, roomy, body):
    for _ in range(4):
        assert as_alice.post(URL, body(), format="json").status_code == 201
    response = as_alice.post(URL, body(), format="json")
    assert response.status_code == 402
    problem = response.json()
    assert (problem["balance"], problem["committed_hourly_cost"], problem["estimated_hourly_cost"]) == (
        "10.000000", "10.000000", "2.500000")
    assert "10.00 USD/hour already pending or running" in problem["detail"]
    assert Deployment.objects.count() == 4


def test_stopped_deployments_commit_nothing(as_alice, roomy, body):
    ids = [as_alice.post(URL, body(), format="json").json()["deployment"]["id"] for _ in range(4)]
    as_alice.post(f"{URL}/{ids[0]}/stop")
    assert as_alice.post(URL, body(), format="json").status_code == 201


def test_another_tenants_deployments_commit_nothing_of_this_one(as_alice, as_mallory, roomy, evil, body):
    set_balance(evil, Decimal("10"))
    for _ in range(4):
        assert as_mallory.post(URL, body(), format="json").status_code == 201
    assert as_alice.post(URL, body(), format="json").status_code == 201


def test_starting_a_stopped_deployment_counts_what_already_runs(as_alice, roomy, body):
    stopped = as_alice.post(URL, body(), format="json").json()["deployment"]["id"]
    as_alice.post(f"{URL}/{stopped}/stop")
    others = [as_alice.post(URL, body(), format="json").json()["deployment"]["id"] for _ in range(4)]
    response = as_alice.post(f"{URL}/{stopped}/start")
    assert response.status_code == 402
    assert (response.json()["committed_hourly_cost"], response.json()["estimated_hourly_cost"]) == (
        "10.000000", "2.500000")
    as_alice.post(f"{URL}/{others[0]}/stop")
    assert as_alice.post(f"{URL}/{stopped}/start").status_code == 200


def test_scaling_up_counts_the_tenants_other_deployments(as_alice, roomy, body):
    scaled = as_alice.post(URL, body(), format="json").json()["deployment"]["id"]
    assert as_alice.post(URL, body(gpus_per_container=2), format="json").status_code == 201  # 5.00/hour
    assert as_alice.patch(f"{URL}/{scaled}", {"replica_count": 2}, format="json").status_code == 200  # 5 + 5
    response = as_alice.patch(f"{URL}/{scaled}", {"replica_count": 3}, format="json")  # 5 + 7.50
    assert response.status_code == 402
    assert (response.json()["committed_hourly_cost"], response.json()["estimated_hourly_cost"]) == (
        "5.000000", "7.500000")
    assert Deployment.objects.get(pk=scaled).replica_count == 2


def _concurrently(user, calls: list[tuple[str, str, dict | None]]) -> list:
    """Each (method, url, body) from its own thread and database connection, all released at once
    by a barrier, as concurrent API calls would be. Returns the responses.

    The clients (their tokens) are made here, before the threads: a thread that failed before the
    barrier would leave the others waiting on it. The barrier and the joins have deadlines, so a
    thread that cannot get a connection fails the test instead of hanging the suite."""
    import threading

    from django.db import connection

    responses, errors = [], []
    clients = [client_for(user, tenant="acme") for _ in calls]
    barrier = threading.Barrier(len(calls))

    def attempt(client, method, url, data):
        try:
            barrier.wait(timeout=60)
            responses.append(getattr(client, method)(url, data, format="json"))
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(repr(error))
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(client, *call), daemon=True)
               for client, call in zip(clients, calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(responses) == len(calls), f"{len(calls) - len(responses)} calls never answered"
    return responses


def _committed_hours(tenant) -> Decimal:
    live = Deployment.objects.filter(tenant=tenant, deleted_at__isnull=True).exclude(
        status__in=("stopped", "failed", "expired"))
    return sum((Decimal("2.50") * d.gpus_per_container * d.replica_count for d in live), Decimal("0"))


@pytest.mark.django_db(transaction=True)
def test_seventeen_concurrent_creates_never_commit_more_than_the_balance_covers(alice, roomy, body):
    """The funds race of issue 23: 17 one-GPU creates at once on a credit that covers four."""
    responses = _concurrently(alice, [("post", URL, body())] * 17)
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 4 + [402] * 13, codes
    assert Deployment.objects.filter(tenant=roomy).count() == 4
    assert _committed_hours(roomy) <= Decimal("10")


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_never_commit_more_than_the_balance_covers(alice, roomy, body):
    client = client_for(alice, tenant="acme")
    ids = [client.post(URL, body(), format="json").json()["deployment"]["id"] for _ in range(4)]
    for deployment_id in ids:
        client.post(f"{URL}/{deployment_id}/stop")
    set_balance(roomy, Decimal("5"))  # two of the four
    responses = _concurrently(alice, [("post", f"{URL}/{i}/start", None) for i in ids])
    assert sorted(r.status_code for r in responses) == [200, 200, 402, 402]
    assert _committed_hours(roomy) <= Decimal("5")
