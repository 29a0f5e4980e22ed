from datetime import timedelta

import pytest
from django.utils import timezone

from tests.deployments.conftest import URL
from tests.deployments.factories import LogLineFactory, deployment_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(acme):
    deployment = deployment_for(acme, replica_count=2)
    r0, r1 = deployment.replicas.order_by("ordinal")
    start = timezone.now() - timedelta(minutes=10)
    for i in range(6):
        LogLineFactory(deployment=deployment, replica=r0 if i % 2 == 0 else r1, seq=i, ts=start + timedelta(seconds=i),
                       message=f"line {i}", stream="stderr" if i == 5 else "stdout")
    return deployment, start


def logs(client, deployment, **params):
    return client.get(f"{URL}/{deployment.pk}/logs", params)


def test_it_returns_lines_oldest_first(as_alice, logged):
    deployment, _ = logged
    response = logs(as_alice, deployment)
    assert response.status_code == 200
    lines = response.json()["logs"]
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(6)]
    assert set(lines[0]) >= {"timestamp", "replica", "stream", "message"}
    assert [line["replica"] for line in lines] == [0, 1, 0, 1, 0, 1]
    assert lines[5]["stream"] == "stderr"


def test_tail_keeps_the_newest_lines_in_order(as_alice, logged):
    deployment, _ = logged
    assert [line["message"] for line in logs(as_alice, deployment, tail=2).json()["logs"]] == ["line 4", "line 5"]


def test_since_filters_by_time(as_alice, logged):
    deployment, start = logged
    since = (start + timedelta(seconds=4)).isoformat()
    assert [line["message"] for line in logs(as_alice, deployment, since=since).json()["logs"]] == ["line 4", "line 5"]


def test_replica_filters_by_ordinal(as_alice, logged):
    deployment, _ = logged
    lines = logs(as_alice, deployment, replica=1).json()["logs"]
    assert [line["message"] for line in lines] == ["line 1", "line 3", "line 5"]


@pytest.mark.parametrize(("params", "field"), [
    ({"tail": 0}, "tail"), ({"tail": 10001}, "tail"), ({"tail": "all"}, "tail"),
    ({"since": "yesterday"}, "since"), ({"since": "2024-13-45T99:00:00Z"}, "since"),
    ({"replica": 7}, "replica"), ({"replica": "abc"}, "replica"), ({"replica": -1}, "replica"),
])
def test_bad_parameters_are_a_400_naming_them(as_alice, logged, params, field):
    deployment, _ = logged
    response = logs(as_alice, deployment, **params)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {field}


def test_no_lines_is_an_empty_list(as_alice, acme):
    assert logs(as_alice, deployment_for(acme)).json() == {"logs": []}
