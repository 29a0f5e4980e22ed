"""Issue 25: `GET /api/v1/deployments/{id}/metrics/requests`, a deployment's requests through the
gateways over the last hour: sums over gateways and minutes, quantiles from the summed latency
histograms, one zero-filled entry per minute, `?minutes=` validated (never a 500), another
tenant's deployment a 404."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cloud.deployments.models import LATENCY_BUCKETS, Gateway, RequestMinute
from cloud.deployments.selectors import histogram_quantile
from cloud.deployments.services import deployment_delete
from tests.conftest import client_for
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db


def metrics_url(deployment, query: str = "") -> str:
    return f"{URL}/{deployment.pk}/metrics/requests{query}"


def this_minute() -> datetime:
    return datetime.now(dt_timezone.utc).replace(second=0, microsecond=0)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def web(acme):
    return deployment_for(acme, name="web", traffic_port=8080)


@pytest.fixture
def gateway_rows(db):
    """count(deployment, minutes_ago, requests, errors=0, gateway="gw-a", **buckets): one row as
    the collector writes it; buckets as b10=3 (3 requests in (5, 10] ms) or inf=1."""
    gateways: dict[str, Gateway] = {}

    def count(deployment, minutes_ago: int, requests: int, errors: int = 0, *, gateway: str = "gw-a", **buckets):
        if gateway not in gateways:
            gateways[gateway] = Gateway(name=gateway, control_url="http://127.0.0.1:9")
            gateways[gateway].set_token("t0ken-0123456789abcdef")
            gateways[gateway].save()
        histogram = {bucket: 0 for bucket in LATENCY_BUCKETS}
        for name, n in buckets.items():
            histogram[name.removeprefix("b")] = n
        return RequestMinute.objects.create(gateway=gateways[gateway], deployment=deployment,
                                            minute=this_minute() - timedelta(minutes=minutes_ago), requests=requests,
                                            errors=errors, latency_ms=histogram,
                                            collected_at=datetime.now(dt_timezone.utc))

    return count


# -- quantiles ------------------------------------------------------------------------------------


def counts(**buckets) -> list[int]:
    return [buckets.get("inf" if bucket == "inf" else f"b{bucket}", 0) for bucket in LATENCY_BUCKETS]


@pytest.mark.parametrize(("histogram", "q", "expected"), [
    (counts(b1=1), 0.5, 0.5),  # within (0, 1]
    (counts(b2=4), 0.5, 1.5),  # the 2nd of 4 in (1, 2]
    (counts(b10=50, b100=50), 0.5, 10.0),  # the 50th is the last of (5, 10]
    (counts(b10=50, b100=50), 0.99, 99.0),  # the 99th: 49/50 of the way through (50, 100]
    (counts(b10=99, b60000=1), 0.99, 10.0),
    (counts(b10=98, b60000=2), 0.99, 45000.0),  # half of (30000, 60000]
    (counts(inf=3), 0.5, 60000.0),  # the unbounded bucket says no more than its lower bound
    (counts(b1=1, inf=99), 0.99, 60000.0),
    (counts(), 0.5, None),
])
def test_quantiles_interpolate_within_the_bucket(histogram, q, expected):
    assert histogram_quantile(histogram, q) == expected


@hypothesis_settings(max_examples=200, deadline=None)
@given(histogram=st.lists(st.integers(min_value=0, max_value=10**9), min_size=16, max_size=16),
       q=st.floats(min_value=0.01, max_value=1.0))
def test_a_quantile_lies_within_the_bounds_of_its_bucket(histogram, q):
    bounds = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
    value = histogram_quantile(histogram, q)
    if not any(histogram):
        assert value is None
        return
    rank, below = q * sum(histogram), 0
    for index, n in enumerate(histogram):
        below += n
        if n and below >= rank:
            break
    lower, upper = bounds[index], bounds[min(index + 1, len(bounds) - 1)]
    assert lower <= value <= upper
    assert histogram_quantile(histogram, 0.5) <= histogram_quantile(histogram, 0.99)


# -- the endpoint ---------------------------------------------------------------------------------


def test_the_last_hour_summed_over_gateways_and_minutes(as_alice, web, gateway_rows):
    gateway_rows(web, 2, 60, 3, b10=60)
    gateway_rows(web, 2, 10, 0, gateway="gw-b", b1000=10)
    gateway_rows(web, 30, 30, 0, b1000=29)  # one request without a time: the client left
    response = as_alice.get(metrics_url(web))
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["requests"], body["errors"], body["error_rate"]) == (100, 3, 0.03)
    # 99 timed: 60 in (5, 10], 39 in (500, 1000]. p50: the 49.5th; p99: the 98.01st.
    assert body["latency_ms"] == {"p50": pytest.approx(5 + 5 * 49.5 / 60, abs=0.051),
                                  "p99": pytest.approx(500 + 500 * 38.01 / 39, abs=0.051)}
    requests_by_minute = {parse(m["minute"]): (m["requests"], m["errors"]) for m in body["minutes"] if m["requests"]}
    now = this_minute()
    assert requests_by_minute in (
        {now - timedelta(minutes=2): (70, 3), now - timedelta(minutes=30): (30, 0)},
        # the clock ticked between the rows and the request: the same rows, a minute further back
        {now - timedelta(minutes=3): (70, 3), now - timedelta(minutes=31): (30, 0)})


def test_sixty_minutes_zero_filled_ending_with_the_current_one(as_alice, web, gateway_rows):
    gateway_rows(web, 5, 1, b1=1)
    before = this_minute()
    body = as_alice.get(metrics_url(web)).json()
    after = this_minute()
    starts = [parse(m["minute"]) for m in body["minutes"]]
    assert len(starts) == 60
    assert all(b - a == timedelta(minutes=1) for a, b in zip(starts, starts[1:]))
    assert before <= starts[-1] <= after  # the current minute, still being counted, is the last
    assert parse(body["window_start"]) == starts[0] and parse(body["window_end"]) == starts[-1] + timedelta(minutes=1)
    assert [m["requests"] for m in body["minutes"]].count(0) == 59
    assert all(set(m) == {"minute", "requests", "errors"} for m in body["minutes"])


def test_without_requests_the_rates_and_quantiles_are_null(as_alice, web):
    body = as_alice.get(metrics_url(web)).json()
    assert (body["requests"], body["errors"], body["error_rate"]) == (0, 0, None)
    assert body["latency_ms"] == {"p50": None, "p99": None}
    assert len(body["minutes"]) == 60 and not any(m["requests"] or m["errors"] for m in body["minutes"])


def test_only_the_window_counts(as_alice, web, gateway_rows):
    gateway_rows(web, 58, 1, b1=1)
    gateway_rows(web, 61, 100, 100, inf=100)  # over an hour ago
    gateway_rows(web, 1000, 7, b1=7)
    body = as_alice.get(metrics_url(web)).json()
    assert (body["requests"], body["errors"], body["latency_ms"]["p99"]) == (1, 0, 1.0)  # 0.99, to 0.1 ms
    five = as_alice.get(metrics_url(web, "?minutes=5")).json()
    assert (five["requests"], len(five["minutes"])) == (0, 5)
    day = as_alice.get(metrics_url(web, "?minutes=1440")).json()
    assert (day["requests"], day["errors"], len(day["minutes"])) == (108, 100, 1440)


def test_only_this_deployments_rows_count(as_alice, acme, evil, web, gateway_rows):
    gateway_rows(deployment_for(acme, name="other", traffic_port=9000), 1, 50, 50, inf=50)
    gateway_rows(deployment_for(evil, name="theirs", traffic_port=9000), 1, 40, 40, inf=40)
    gateway_rows(web, 1, 2, b5=2)
    body = as_alice.get(metrics_url(web)).json()
    assert (body["requests"], body["errors"]) == (2, 0)


@pytest.mark.parametrize("minutes", ["0", "1441", "-1", "abc", "1e3", "60.5", "9" * 40, "\x00", "6 0"])
def test_a_bad_window_is_a_400_naming_it(as_alice, web, minutes):
    response = as_alice.get(metrics_url(web), {"minutes": minutes})
    assert response.status_code == 400, (minutes, response.content)
    assert response["Content-Type"] == "application/problem+json"
    assert "minutes" in response.content.decode()


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.sampled_from(["minutes", "Minutes", "window", "after"]),
                             st.one_of(st.text(max_size=30), st.integers(min_value=-10**20, max_value=10**20).map(str)),
                             max_size=3))
def test_any_query_is_a_200_or_a_400_never_a_500(as_alice, web, query):
    response = as_alice.get(metrics_url(web), query)
    assert response.status_code in (200, 400), (query, response.content)
    if response.status_code == 200:
        assert 1 <= len(response.json()["minutes"]) <= 1440


# -- who may --------------------------------------------------------------------------------------


def test_a_read_token_reads_and_other_scopes_do_not(as_alice_readonly, alice, web):
    assert as_alice_readonly.get(metrics_url(web)).status_code == 200
    assert client_for(alice, scopes="billing:read", tenant="acme").get(metrics_url(web)).status_code == 403


def test_anonymous_gets_401(anonymous, web):
    assert anonymous.get(metrics_url(web)).status_code == 401


def test_another_tenants_or_a_deleted_or_no_deployment_is_a_404(as_alice, as_mallory, acme, web, gateway_rows):
    gateway_rows(web, 1, 9, 9, inf=9)
    response = as_mallory.get(metrics_url(web))
    assert response.status_code == 404 and response["Content-Type"] == "application/problem+json"
    assert as_alice.get(f"{URL}/00000000-0000-0000-0000-000000000000/metrics/requests").status_code == 404
    assert as_alice.get(f"{URL}/not-a-uuid/metrics/requests").status_code == 404
    deployment_delete(tenant=acme, actor=None, deployment_id=web.pk)
    assert as_alice.get(metrics_url(web)).status_code == 404


def test_the_schema_documents_the_operation(as_alice):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/deployments/{id}/metrics/requests"]["get"]
    assert any(p["name"] == "minutes" and p["in"] == "query" for p in operation["parameters"])
    assert "200" in operation["responses"]
    assert "interpolated" in operation["description"]
