from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Replica
from tests.deployments.conftest import URL
from tests.deployments.factories import LogLineFactory, deployment_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(acme):
    deployment = deployment_for(acme, replica_count=2)
    r0, r1 = deployment.replicas.order_by("ordinal")
    start = timezone.now() - timedelta(minutes=10)
    for i in range(6):
        LogLineFactory(deployment=deployment, replica=r0 if i % 2 == 0 else r1, seq=i + 1, ts=start + timedelta(seconds=i),
                       message=f"line {i}", stream="stderr" if i == 5 else "stdout")
    return deployment, start


def logs(client, deployment, **params):
    return client.get(f"{URL}/{deployment.pk}/logs", params)


def messages(response) -> list[str]:
    return [line["message"] for line in response.json()["logs"]]


def test_it_returns_lines_oldest_first_with_the_frame_fields(as_alice, logged):
    deployment, _ = logged
    response = logs(as_alice, deployment)
    assert response.status_code == 200
    lines = response.json()["logs"]
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(6)]
    assert set(lines[0]) == {"cursor", "replica", "ordinal", "generation", "seq", "ts", "timestamp", "stream",
                             "message", "continued"}
    r0, r1 = deployment.replicas.order_by("ordinal")
    # `replica` is the incarnation's id now; the ordinal (what `replica` used to be) is `ordinal`.
    assert [line["replica"] for line in lines] == [str(r0.uid), str(r1.uid)] * 3
    assert [line["ordinal"] for line in lines] == [0, 1, 0, 1, 0, 1]
    assert all(line["timestamp"] == line["ts"] and line["generation"] == 1 for line in lines)
    assert lines[5]["stream"] == "stderr"
    assert [int(line["cursor"]) for line in lines] == sorted(int(line["cursor"]) for line in lines)


def test_tail_keeps_the_newest_lines_in_order(as_alice, logged):
    deployment, _ = logged
    response = logs(as_alice, deployment, tail=2)
    assert messages(response) == ["line 4", "line 5"]
    assert response.json()["has_more"] is True


def test_since_filters_by_time(as_alice, logged):
    deployment, start = logged
    since = (start + timedelta(seconds=4)).isoformat()
    assert messages(logs(as_alice, deployment, since=since)) == ["line 4", "line 5"]


def test_after_and_before_page_by_cursor_without_overlap_or_gap(as_alice, logged):
    deployment, _ = logged
    first = logs(as_alice, deployment, after=0, limit=4).json()
    assert [line["message"] for line in first["logs"]] == [f"line {i}" for i in range(4)]
    assert first["has_more"] is True and first["next_cursor"] == first["logs"][-1]["cursor"]
    rest = logs(as_alice, deployment, after=first["next_cursor"], limit=4).json()
    assert [line["message"] for line in rest["logs"]] == ["line 4", "line 5"] and rest["has_more"] is False
    assert logs(as_alice, deployment, after=rest["next_cursor"]).json() == {
        "logs": [], "has_more": False, "next_cursor": rest["next_cursor"], "prev_cursor": None, "truncated": False}
    back = logs(as_alice, deployment, before=rest["logs"][0]["cursor"], limit=3).json()
    assert [line["message"] for line in back["logs"]] == ["line 1", "line 2", "line 3"] and back["has_more"] is True
    between = logs(as_alice, deployment, after=first["logs"][0]["cursor"], before=rest["logs"][0]["cursor"]).json()
    assert [line["message"] for line in between["logs"]] == ["line 1", "line 2", "line 3"]


def test_after_wins_over_tail(as_alice, logged):
    deployment, _ = logged
    assert len(logs(as_alice, deployment, after=0, tail=1).json()["logs"]) == 6


def test_replica_filters_by_ordinal_across_incarnations_or_by_incarnation_id(as_alice, logged):
    deployment, _ = logged
    r1 = deployment.replicas.get(ordinal=1)
    Replica.objects.filter(pk=r1.pk).update(state="stopped")
    newer = Replica.objects.create(deployment=deployment, ordinal=1, generation=2)
    LogLineFactory(deployment=deployment, replica=newer, seq=1, message="line of generation 2")
    assert messages(logs(as_alice, deployment, replica=1)) == ["line 1", "line 3", "line 5", "line of generation 2"]
    assert messages(logs(as_alice, deployment, replica=str(newer.uid))) == ["line of generation 2"]
    shown = logs(as_alice, deployment, replica=1).json()["logs"]
    assert [line["generation"] for line in shown] == [1, 1, 1, 2]


def test_stream_filters(as_alice, logged):
    deployment, _ = logged
    assert messages(logs(as_alice, deployment, stream="stderr")) == ["line 5"]


def test_a_system_line_has_no_seq_and_a_split_line_says_it_continues(as_alice, logged):
    deployment, _ = logged
    r0 = deployment.replicas.get(ordinal=0)
    LogLineFactory(deployment=deployment, replica=r0, seq=None, stream="system", message="3 lines never arrived")
    LogLineFactory(deployment=deployment, replica=r0, seq=20, message="x" * 10, continued=True)
    last = logs(as_alice, deployment, tail=2).json()["logs"]
    assert (last[0]["seq"], last[0]["stream"], last[1]["continued"]) == (None, "system", True)


@pytest.mark.parametrize(("params", "field"), [
    ({"tail": 0}, "tail"), ({"tail": 10001}, "tail"), ({"tail": "all"}, "tail"),
    ({"since": "yesterday"}, "since"), ({"since": "2024-13-45T99:00:00Z"}, "since"),
    ({"replica": 7}, "replica"), ({"replica": "abc"}, "replica"), ({"replica": -1}, "replica"),
    ({"replica": "11111111-2222-3333-4444-555555555555"}, "replica"),
    ({"after": "x1"}, "after"), ({"after": -3}, "after"), ({"before": "1e9"}, "before"),
    ({"limit": 0}, "limit"), ({"limit": 10001}, "limit"), ({"stream": "stdin"}, "stream"),
])
def test_bad_parameters_are_a_400_naming_them(as_alice, logged, params, field):
    deployment, _ = logged
    response = logs(as_alice, deployment, **params)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {field}


def test_no_lines_is_an_empty_list(as_alice, acme):
    assert logs(as_alice, deployment_for(acme)).json() == {
        "logs": [], "has_more": False, "next_cursor": None, "prev_cursor": None, "truncated": False}


def test_a_page_of_many_lines_costs_a_fixed_number_of_queries(as_alice, logged, django_assert_max_num_queries):
    deployment, _ = logged
    r0 = deployment.replicas.get(ordinal=0)
    for i in range(200):
        LogLineFactory(deployment=deployment, replica=r0, seq=100 + i)
    with django_assert_max_num_queries(8):
        assert len(logs(as_alice, deployment, tail=150, replica=0).json()["logs"]) == 150
