"""Issue 25: the plane collects every gateway's per-minute request counts (`GET /v1/stats`) over
real HTTP from stand-in gateways on 127.0.0.1: one row per (gateway, deployment, minute),
replaced (not added to) by the next collection, summed over gateways by the API; unknown labels
and malformed entries skipped; a failing gateway logged and skipped without stopping the others;
rows past two days purged."""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.conf import settings as django_settings

from cloud.deployments import selectors, tasks
from cloud.deployments.models import LATENCY_BUCKETS, Gateway, RequestMinute
from cloud.deployments.services import gateway_register, request_stats_collect
from cloud.deployments.services import request_stats
from tests.deployments import standin_gateway
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db

TOKEN = "t0ken-of-the-stats-gateway-0123456789"
# A fixed plane clock, mid-minute: minutes are whole UTC minutes before it.
NOW = datetime(2026, 12, 7, 12, 30, 25, tzinfo=dt_timezone.utc)


def minute(n: int) -> datetime:
    """The start of the minute `n` minutes before NOW's."""
    return NOW.replace(second=0) - timedelta(minutes=n)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(label: str, at: datetime, requests: int, errors: int = 0, **latency: int) -> dict:
    """A `/v1/stats` entry as the gateway writes it: every bucket present. latency: b10=3 is 3
    requests in the (5, 10] ms bucket, inf=1 one above 60 s."""
    histogram = {bucket: 0 for bucket in LATENCY_BUCKETS}
    for name, count in latency.items():
        histogram[name.removeprefix("b")] = count
    return {"label": label, "minute": iso(at), "requests": requests, "errors": errors, "latency_ms": histogram}


@pytest.fixture
def gateways():
    with standin_gateway.registered(TOKEN) as start:
        yield start


@pytest.fixture
def web(acme):
    return deployment_for(acme, name="web", traffic_port=8080)


def rows(**filters) -> list[tuple]:
    return [(r.gateway.name, r.deployment.name, r.minute, r.requests, r.errors,
             {b: n for b, n in r.latency_ms.items() if n})
            for r in RequestMinute.objects.filter(**filters).select_related("gateway", "deployment")
            .order_by("gateway__name", "deployment__name", "minute")]


def a_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_gateway_minute_and_deployment_becomes_a_row_asked_with_the_gateways_token(gateways, acme, web):
    other = deployment_for(acme, name="other", traffic_port=9000)
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, minute(2), 10, 1, b10=7, b100=2),
                     entry(web.endpoint_label, minute(1), 3, b1=3),
                     entry(other.endpoint_label, minute(1), 5, 5, inf=4)]

    outcome = request_stats_collect(now=NOW)

    assert outcome == {"collected": {"gw-a": 3}, "failed": {}, "skipped": 0, "purged": 0}
    (asked,) = [seen for seen in gateway.requests if seen.path == "/v1/stats"]
    assert asked.method == "GET" and asked.headers["authorization"] == f"Bearer {TOKEN}"
    assert rows() == [("gw-a", "other", minute(1), 5, 5, {"inf": 4}),
                      ("gw-a", "web", minute(2), 10, 1, {"10": 7, "100": 2}),
                      ("gw-a", "web", minute(1), 3, 0, {"1": 3})]
    assert set(RequestMinute.objects.first().latency_ms) == set(LATENCY_BUCKETS)


def test_collecting_the_same_hour_again_replaces_each_minute_and_adds_nothing(gateways, web):
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, minute(2), 10, b10=10), entry(web.endpoint_label, minute(1), 4, b10=4)]
    request_stats_collect(now=NOW)
    first = rows()
    request_stats_collect(now=NOW + timedelta(seconds=20))
    assert rows() == first and RequestMinute.objects.count() == 2

    # A minute later the gateway counted more in the minute that was then current, and a new one.
    gateway.stats = [entry(web.endpoint_label, minute(2), 10, b10=10),
                     entry(web.endpoint_label, minute(1), 9, 2, b10=6, b500=3),
                     entry(web.endpoint_label, minute(0), 1, b5=1)]
    request_stats_collect(now=NOW + timedelta(minutes=1))
    assert rows() == [("gw-a", "web", minute(2), 10, 0, {"10": 10}),
                      ("gw-a", "web", minute(1), 9, 2, {"10": 6, "500": 3}),
                      ("gw-a", "web", minute(0), 1, 0, {"5": 1})]
    metrics = selectors.request_metrics_for(tenant=web.tenant, deployment_id=web.pk, now=NOW + timedelta(minutes=1))
    assert (metrics["requests"], metrics["errors"]) == (20, 2)


def test_a_gateway_restarted_within_a_minute_does_not_lower_what_was_collected_of_it(gateways, web):
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, minute(1), 50, b10=50)]
    request_stats_collect(now=NOW)
    # Restarted: its memory is empty, and it counted 2 requests of that minute since.
    gateway.stats = [entry(web.endpoint_label, minute(1), 2, b10=2)]
    request_stats_collect(now=NOW)
    assert rows() == [("gw-a", "web", minute(1), 50, 0, {"10": 50})]
    # The gateway's own record of a minute it restarted in: an hour on, it is simply no longer reported.
    gateway.stats = []
    request_stats_collect(now=NOW + timedelta(minutes=61))
    assert rows() == [("gw-a", "web", minute(1), 50, 0, {"10": 50})]


def test_two_gateways_are_kept_apart_and_summed_by_the_api(gateways, acme, web, as_alice):
    first, second = gateways("gw-a"), gateways("gw-b", "another-token-for-gw-b-0123456789")
    first.stats = [entry(web.endpoint_label, minute(1), 6, 1, b10=6)]
    second.stats = [entry(web.endpoint_label, minute(1), 4, 2, b1000=4), entry(web.endpoint_label, minute(3), 1, b2=1)]

    assert request_stats_collect(now=NOW)["collected"] == {"gw-a": 1, "gw-b": 2}
    assert rows() == [("gw-a", "web", minute(1), 6, 1, {"10": 6}),
                      ("gw-b", "web", minute(3), 1, 0, {"2": 1}),
                      ("gw-b", "web", minute(1), 4, 2, {"1000": 4})]
    metrics = selectors.request_metrics_for(tenant=acme, deployment_id=web.pk, now=NOW)
    by_minute = {m["minute"]: (m["requests"], m["errors"]) for m in metrics["minutes"] if m["requests"]}
    assert by_minute == {minute(1): (10, 3), minute(3): (1, 0)}
    assert (metrics["requests"], metrics["errors"], metrics["error_rate"]) == (11, 3, round(3 / 11, 6))
    # 11 timed: 1 in (1, 2], 6 in (5, 10], 4 in (500, 1000]. p50: the 5.5th, within (5, 10];
    # p99: the 10.89th, within (500, 1000].
    assert metrics["latency_ms"] == {"p50": pytest.approx(5 + 5 * 4.5 / 6, abs=0.051),
                                     "p99": pytest.approx(500 + 500 * 3.89 / 4, abs=0.051)}


def test_labels_of_no_deployment_are_ignored(gateways, web):
    gateway = gateways("gw-a")
    gateway.stats = [entry("nobody-zz9x2q", minute(1), 100, 100, inf=100), entry(web.endpoint_label, minute(1), 1, b1=1)]
    assert request_stats_collect(now=NOW) == {"collected": {"gw-a": 1}, "failed": {}, "skipped": 0, "purged": 0}
    assert rows() == [("gw-a", "web", minute(1), 1, 0, {"1": 1})]


def test_another_tenants_label_lands_on_that_deployment_only(gateways, acme, evil, web):
    theirs = deployment_for(evil, name="web", traffic_port=8080)
    gateway = gateways("gw-a")
    gateway.stats = [entry(theirs.endpoint_label, minute(1), 7, b10=7)]
    request_stats_collect(now=NOW)
    assert selectors.request_metrics_for(tenant=acme, deployment_id=web.pk, now=NOW)["requests"] == 0
    assert selectors.request_metrics_for(tenant=evil, deployment_id=theirs.pk, now=NOW)["requests"] == 7


def test_a_failing_gateway_is_logged_and_skipped_and_the_others_are_collected(gateways, web, caplog):
    broken = gateways("gw-a")
    broken.stats_fail_with = 500
    gateways("gw-b", register_token="not-the-token-of-gw-b-0123456789")
    garbage = gateways("gw-c")
    garbage.stats_body = b"<html>not json</html>"
    not_a_list = gateways("gw-d")
    not_a_list.stats_body = b'{"minutes": {"label": "x"}}'
    deep = gateways("gw-e")
    deep.stats_body = b"[" * 100_000
    gateway_register(name="gw-f", control_url=f"http://127.0.0.1:{a_free_port()}", token=TOKEN)  # nobody listens
    good = gateways("gw-g")
    good.stats = [entry(web.endpoint_label, minute(1), 2, b20=2)]

    with caplog.at_level(logging.WARNING, logger="cloud.deployments.services.request_stats"):
        outcome = request_stats_collect(now=NOW)

    assert outcome["collected"] == {"gw-g": 1}
    failed = outcome["failed"]
    assert set(failed) == {"gw-a", "gw-b", "gw-c", "gw-d", "gw-e", "gw-f"}
    assert failed["gw-a"] == "HTTP 500: the stats are not available"
    assert failed["gw-b"] == "HTTP 401: missing or wrong token"
    assert failed["gw-c"] == failed["gw-e"] == "the answer is not JSON"
    assert failed["gw-d"] == 'the answer is not {"minutes": [...]}'
    assert failed["gw-f"].startswith("ConnectError")
    assert rows() == [("gw-g", "web", minute(1), 2, 0, {"20": 2})]
    for name in failed:
        assert any(name in record.getMessage() for record in caplog.records), name
    # The push's record of the gateways is not the collector's to write.
    assert set(Gateway.objects.values_list("last_error", flat=True)) == {""}


def test_an_answer_over_the_size_limit_is_refused(gateways, web, monkeypatch):
    monkeypatch.setattr(request_stats, "MAX_STATS_BYTES", 1000)
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, minute(n), 1, b1=1) for n in range(60)]
    outcome = request_stats_collect(now=NOW)
    assert outcome["failed"] == {"gw-a": "the answer is larger than 1000 bytes"} and not rows()


def test_a_gateway_whose_token_cannot_be_decrypted_is_skipped(gateways, web):
    gateways("gw-a")
    Gateway.objects.filter(name="gw-a").update(token_encrypted="not-a-fernet-token")
    good = gateways("gw-b")
    good.stats = [entry(web.endpoint_label, minute(1), 1, b1=1)]
    outcome = request_stats_collect(now=NOW)
    assert list(outcome["failed"]) == ["gw-a"] and outcome["collected"] == {"gw-b": 1}


@pytest.mark.parametrize("bad", [
    {"requests": True},  # a bool is not a count
    {"requests": 1.0},
    {"requests": -1},
    {"requests": 10**13},
    {"errors": 3},  # more errors than requests
    {"latency_ms": {"1": 3}},  # more timed than counted
    {"latency_ms": {"7": 1}},  # not a bucket of the gateway's
    {"latency_ms": {"1": "1"}},
    {"latency_ms": [1, 1]},
    {"minute": "2026-12-07T12:29:30Z"},  # not a minute's start
    {"minute": "2026-12-07T12:29:00"},  # no zone
    {"minute": "yesterday"},
    {"minute": 1765110540},
    {"minute": "2026-12-07T13:00:00Z"},  # half an hour ahead of the plane: a wrong clock
    {"minute": "2026-12-01T12:00:00Z"},  # older than what is kept
    {"label": 7},
    None,
])
def test_a_malformed_entry_is_skipped_and_the_rest_of_the_answer_kept(gateways, web, bad):
    gateway = gateways("gw-a")
    broken = None if bad is None else {**entry(web.endpoint_label, minute(2), 2, 1, b1=2), **bad}
    gateway.stats = [broken, entry(web.endpoint_label, minute(1), 1, b1=1)]
    outcome = request_stats_collect(now=NOW)
    assert outcome["skipped"] == 1 and outcome["collected"] == {"gw-a": 1}
    assert rows() == [("gw-a", "web", minute(1), 1, 0, {"1": 1})]


def test_a_minute_in_another_zone_is_the_same_utc_minute_and_untimed_requests_count(gateways, web):
    gateway = gateways("gw-a")
    late = entry(web.endpoint_label, minute(1), 3, b1=1)  # 2 requests the clients left before an answer
    late["minute"] = minute(1).astimezone(dt_timezone(timedelta(hours=5, minutes=30))).isoformat()
    gateway.stats = [late]
    request_stats_collect(now=NOW)
    assert rows() == [("gw-a", "web", minute(1), 3, 0, {"1": 1})]


def test_rows_older_than_two_days_are_purged_by_the_collection(gateways, web):
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, minute(1), 1, b1=1), entry(web.endpoint_label, minute(2), 1, b1=1)]
    request_stats_collect(now=NOW)
    gateway.stats = []
    assert request_stats_collect(now=minute(2) + timedelta(days=2, seconds=30))["purged"] == 1
    assert [r[2] for r in rows()] == [minute(1)]
    assert request_stats_collect(now=NOW + timedelta(days=3))["purged"] == 1 and not rows()


def test_deleting_a_gateway_or_a_deployment_takes_its_rows(gateways, acme, web):
    gateway = gateways("gw-a")
    other = deployment_for(acme, name="other", traffic_port=9000)
    gateway.stats = [entry(web.endpoint_label, minute(1), 1, b1=1), entry(other.endpoint_label, minute(1), 1, b1=1)]
    request_stats_collect(now=NOW)
    other.delete()
    assert [r[1] for r in rows()] == ["web"]
    Gateway.objects.filter(name="gw-a").delete()
    assert not rows()


def test_without_gateways_the_collection_only_purges():
    assert request_stats_collect(now=NOW) == {"collected": {}, "failed": {}, "skipped": 0, "purged": 0}


def test_beat_collects_every_minute_through_the_task(gateways, web):
    entry_ = django_settings.CELERY_BEAT_SCHEDULE["deployments-collect-request-stats"]
    assert entry_["task"] == "deployments.collect_request_stats" and entry_["schedule"] == 60.0
    gateway = gateways("gw-a")
    gateway.stats = [entry(web.endpoint_label, datetime.now(dt_timezone.utc).replace(second=0, microsecond=0), 2, b5=2)]
    outcome = tasks.request_stats_collect.apply().get()
    assert outcome["collected"] == {"gw-a": 1} and RequestMinute.objects.get().requests == 2
    assert json.loads(json.dumps(outcome)) == outcome  # a result Celery can carry
