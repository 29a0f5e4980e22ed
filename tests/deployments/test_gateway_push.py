"""Issue 25: the plane pushes its whole route table to every registered gateway, over real HTTP
(a stand-in gateway on 127.0.0.1): the body and token the gateway expects, failures recorded per
gateway without stopping the others, an unchanged table not re-sent within a minute (unless the
gateway lost it), and a burst of route changes turned into one queued push after they commit."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from cloud.deployments import tasks
from cloud.deployments.models import Gateway
from cloud.deployments.routes import route_table
from cloud.deployments.services import endpoint_key_create, gateway_register, routes_changed, routes_push
from cloud.kv import shared_redis
from tests.deployments import standin_gateway
from tests.deployments.factories import NodeFactory, deployment_for, place_running

pytestmark = pytest.mark.django_db

TOKEN = "t0ken-of-the-first-gateway-0123456789"


@pytest.fixture
def gateways():
    with standin_gateway.registered(TOKEN) as start:
        yield start


def row(name: str) -> Gateway:
    return Gateway.objects.get(name=name)


def a_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_whole_table_goes_to_every_gateway_with_its_token(gateways, acme, settings):
    settings.GANTRY_ENDPOINT_DOMAIN = "apps.example.com"
    deployment = deployment_for(acme, name="web", traffic_port=8080, request_timeout_s=30)
    (replica,) = place_running(deployment, node=NodeFactory(hardware_type=deployment.hardware_type,
                                                            public_address="198.51.100.66"))
    made = endpoint_key_create(tenant=acme, actor=None, deployment_id=deployment.pk, name="ci")
    deployment_for(acme, name="waiting", traffic_port=9000, endpoint_access="public")
    first, second = gateways("gw-a"), gateways("gw-b", "another-token-for-gw-b-0123456789")

    outcome = routes_push()
    table = route_table()
    assert outcome == {"digest": table.digest(), "pushed": ["gw-a", "gw-b"], "current": [], "failed": []}
    for gateway, token in ((first, TOKEN), (second, "another-token-for-gw-b-0123456789")):
        (put,) = [seen for seen in gateway.requests if seen.method == "PUT"]
        assert put.path == "/v1/routes" and put.headers["authorization"] == f"Bearer {token}"
        assert put.headers["content-type"] == "application/json"
        body = json.loads(put.body)
        assert body == {"version": 1, "digest": table.digest(), "table": json.loads(json.dumps(table.as_dict()))}
        canonical = json.dumps(body["table"], sort_keys=True, separators=(",", ":")).encode()
        assert body["digest"] == hashlib.sha256(canonical).hexdigest()

    routes = {route["label"]: route for route in first.puts[0]["table"]["routes"]}
    assert routes[deployment.endpoint_label] == {
        "label": deployment.endpoint_label, "host": f"{deployment.endpoint_label}.apps.example.com",
        "access": "private", "key_hashes": [hashlib.sha256(made.secret.encode()).hexdigest()], "unavailable": "",
        "timeout_s": 30, "max_body_bytes": 1024 * 2**20, "stop_grace_seconds": 10,
        "backends": [{"replica": str(replica.uid), "address": "198.51.100.66", "port": 30000}],
    }
    waiting = next(route for label, route in routes.items() if label != deployment.endpoint_label)
    assert (waiting["access"], waiting["backends"], waiting["unavailable"]) == ("public", [], "starting")
    assert first.puts[0]["table"]["domain"] == "apps.example.com"

    for name in ("gw-a", "gw-b"):
        gateway = row(name)
        assert gateway.last_digest == table.digest() and gateway.last_error == ""
        assert gateway.last_push_at == gateway.last_success_at is not None


def test_a_failing_gateway_is_recorded_and_the_next_still_gets_the_table(gateways, acme):
    broken = gateways("gw-a")
    broken.fail_with = 400
    gateway_register(name="gw-b", control_url=f"http://127.0.0.1:{a_free_port()}", token=TOKEN)  # nothing listens
    gateways("gw-c", register_token="not-the-token-it-was-started-with")
    working = gateways("gw-d")

    outcome = routes_push()
    assert outcome["failed"] == ["gw-a", "gw-b", "gw-c"] and outcome["pushed"] == ["gw-d"]
    assert row("gw-a").last_error == "HTTP 400: routes.0.backends.0.port: out of range"
    assert row("gw-b").last_error.startswith("ConnectError")
    assert row("gw-c").last_error == "HTTP 401: missing or wrong token"
    for name in ("gw-a", "gw-b", "gw-c"):
        failed = row(name)
        assert failed.last_push_at is not None and failed.last_success_at is None and failed.last_digest == ""
    assert len(working.puts) == 1 and row("gw-d").last_error == ""

    broken.fail_with = None  # fixed: the next round takes it, and the error is cleared
    routes_push()
    assert row("gw-a").last_error == "" and row("gw-a").last_digest == route_table().digest()


def test_an_unchanged_table_is_not_sent_again_within_a_minute_but_is_after(gateways, acme):
    gateway = gateways("gw-a")
    start = timezone.now()
    routes_push(now=start)
    assert routes_push(now=start + timedelta(seconds=59))["current"] == ["gw-a"]
    assert len(gateway.puts) == 1
    assert routes_push(now=start + timedelta(seconds=61))["pushed"] == ["gw-a"]
    assert len(gateway.puts) == 2


def test_a_changed_table_is_sent_at_once(gateways, acme):
    gateway = gateways("gw-a")
    routes_push()
    deployment_for(acme, name="new", traffic_port=8080)
    routes_push()
    assert len(gateway.puts) == 2 and gateway.puts[0]["digest"] != gateway.puts[1]["digest"]


def test_a_restarted_gateway_gets_the_table_again_on_the_next_round(gateways, acme):
    deployment_for(acme, name="web", traffic_port=8080)
    gateway = gateways("gw-a")
    routes_push()
    gateway.restart()  # it serves an empty table now
    assert routes_push()["pushed"] == ["gw-a"]
    assert len(gateway.puts) == 2 and gateway.serving == route_table().digest()


def test_no_gateway_no_work(django_assert_num_queries):
    with django_assert_num_queries(1):
        assert routes_push() == {"digest": None, "pushed": [], "current": [], "failed": []}


def test_the_celery_task_pushes(gateways, acme):
    gateway = gateways("gw-a")
    assert tasks.routes_push.name == "deployments.push_routes"
    tasks.routes_push.apply()
    assert len(gateway.puts) == 1


def test_beat_pushes_every_interval():
    entry = django_settings.CELERY_BEAT_SCHEDULE["deployments-push-routes"]
    assert entry["task"] == "deployments.push_routes"
    assert entry["schedule"] == django_settings.GANTRY_GATEWAY_PUSH_INTERVAL_S == 10


# -- asking for a push ---------------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    shared_redis().delete(cache.make_key("deployments:routes-push-queued"))
    calls = []
    monkeypatch.setattr("cloud.celery.app.send_task", lambda name, **kwargs: calls.append((name, kwargs)))
    return calls


def test_changes_queue_one_push_after_they_commit(sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            for _ in range(3):
                routes_changed()
            assert sent == []  # nothing before the commit: the push would read the old table
    with django_capture_on_commit_callbacks(execute=True):
        routes_changed()  # another commit inside the window: the queued push covers it
    # The push runs when the window closes, after every commit that it covers.
    assert sent == [("deployments.push_routes", {"countdown": 0.5, "ignore_result": True})]
    time.sleep(0.6)
    with django_capture_on_commit_callbacks(execute=True):
        routes_changed()
    assert len(sent) == 2


def test_a_rolled_back_change_queues_nothing(sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                routes_changed()
                raise RuntimeError("rolled back")
    assert sent == []


def test_an_unreachable_broker_does_not_fail_the_write(monkeypatch, django_capture_on_commit_callbacks):
    shared_redis().delete(cache.make_key("deployments:routes-push-queued"))

    def refuse(*args, **kwargs):
        raise OSError("broker away")

    monkeypatch.setattr("cloud.celery.app.send_task", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        routes_changed()  # logged; beat's push carries the change
