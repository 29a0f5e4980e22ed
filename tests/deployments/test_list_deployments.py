from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment
from tests.deployments.conftest import URL
from tests.deployments.factories import DeploymentFactory, deployment_for, place_running
from tests.factories import LocationFactory

pytestmark = pytest.mark.django_db


def make(tenant, n, **kwargs):
    now = timezone.now()
    rows = [DeploymentFactory(tenant=tenant, **kwargs) for _ in range(n)]
    for i, row in enumerate(rows):  # distinct, known creation order: newest first is rows[-1]
        Deployment.objects.filter(pk=row.pk).update(created_at=now - timedelta(minutes=n - i))
    return rows


def test_it_lists_the_tenants_deployments_newest_first(as_alice, acme):
    rows = make(acme, 3)
    response = as_alice.get(URL)
    assert response.status_code == 200
    data = response.json()
    assert [d["id"] for d in data["deployments"]] == [str(r.pk) for r in reversed(rows)]
    assert data["pagination"] == {"page": 1, "limit": 20, "total": 3, "total_pages": 1}


def test_it_never_shows_another_tenants_deployments(as_mallory, acme):
    make(acme, 2)
    data = as_mallory.get(URL).json()
    assert data["deployments"] == [] and data["pagination"]["total"] == 0


def test_it_filters_by_status(as_alice, acme):
    make(acme, 2)
    stopped = DeploymentFactory(tenant=acme, status=Deployment.Status.STOPPED)
    data = as_alice.get(URL, {"status": "stopped"}).json()
    assert [d["id"] for d in data["deployments"]] == [str(stopped.pk)]
    assert data["pagination"]["total"] == 1


def test_an_unknown_status_is_a_400_naming_it(as_alice):
    response = as_alice.get(URL, {"status": "exploded"})
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"status"}


def test_deleted_deployments_are_not_listed(as_alice, acme):
    DeploymentFactory(tenant=acme, deleted_at=timezone.now())
    assert as_alice.get(URL).json()["pagination"]["total"] == 0


@pytest.mark.parametrize(("params", "field"), [
    ({"page": 0}, "page"), ({"page": -1}, "page"), ({"page": "abc"}, "page"),
    ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "abc"}, "limit"),
])
def test_bad_pagination_is_a_400_naming_the_parameter(as_alice, params, field):
    response = as_alice.get(URL, params)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {field}


def test_a_page_past_the_end_is_empty_with_totals(as_alice, acme):
    make(acme, 3)
    data = as_alice.get(URL, {"page": 5, "limit": 2}).json()
    assert data["deployments"] == []
    assert data["pagination"] == {"page": 5, "limit": 2, "total": 3, "total_pages": 2}


def test_an_exact_multiple_of_the_limit_has_no_empty_last_page(as_alice, acme):
    rows = make(acme, 4)
    first = as_alice.get(URL, {"page": 1, "limit": 2}).json()
    second = as_alice.get(URL, {"page": 2, "limit": 2}).json()
    assert first["pagination"]["total_pages"] == 2
    ids = [d["id"] for d in first["deployments"] + second["deployments"]]
    assert ids == [str(r.pk) for r in reversed(rows)]
    assert as_alice.get(URL, {"page": 3, "limit": 2}).json()["deployments"] == []


def test_limit_100_is_allowed(as_alice, acme):
    make(acme, 3)
    assert as_alice.get(URL, {"limit": 100}).json()["pagination"]["limit"] == 100


def test_the_query_count_does_not_grow_with_the_page(as_alice, acme, django_assert_max_num_queries):
    location = LocationFactory()
    for _ in range(3):
        running = deployment_for(acme, replica_count=2, location_ids=[location.id], traffic_port=8080)
        place_running(running)
    make(acme, 30)
    # token, membership, count, page ids, page rows (location ids, running and serving replicas as subqueries)
    as_alice.get(URL, {"limit": 1})
    with django_assert_max_num_queries(5):
        small = as_alice.get(URL, {"limit": 2})
    with django_assert_max_num_queries(5):
        big = as_alice.get(URL, {"limit": 100})
    assert small.status_code == big.status_code == 200
    assert len(big.json()["deployments"]) == 33


def test_running_replicas_show_as_ready_with_one_gateway_endpoint(as_alice, acme):
    deployment = deployment_for(acme, replica_count=2, traffic_port=8080)
    place_running(deployment)
    deployment_for(acme, name="waiting", traffic_port=8080, endpoint_access="public")
    shown = {d["name"]: d for d in as_alice.get(URL).json()["deployments"]}
    assert shown[deployment.name]["ready_replicas"] == 2
    (endpoint,) = shown[deployment.name]["endpoints"]
    assert endpoint == {"type": "https", "name": "http", "url": f"https://{deployment.endpoint_label}.gantry.localhost",
                        "port": 443, "internal_port": 8080, "access": "private", "ready": True}
    assert shown["waiting"]["endpoints"][0]["ready"] is False and shown["waiting"]["endpoints"][0]["access"] == "public"


def test_anonymous_gets_401(anonymous):
    response = anonymous.get(URL)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_a_token_without_deployments_read_gets_403(alice):
    from tests.conftest import client_for

    assert client_for(alice, scopes="templates:read", tenant="acme").get(URL).status_code == 403
