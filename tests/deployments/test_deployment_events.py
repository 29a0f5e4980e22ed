import pytest

from tests.deployments.conftest import URL
from tests.deployments.factories import EventFactory, deployment_for

pytestmark = pytest.mark.django_db


def events(client, deployment, **params):
    return client.get(f"{URL}/{deployment.pk}/events", params)


def test_it_lists_the_deployments_events_in_order(as_alice, acme):
    deployment = deployment_for(acme)
    as_alice.post(f"{URL}/{deployment.pk}/stop")
    response = events(as_alice, deployment)
    assert response.status_code == 200
    shown = response.json()["events"]
    assert [e["type"] for e in shown] == ["deployment.created", "replica.stopped", "deployment.stopped"]
    assert set(shown[0]) == {"id", "type", "deployment_id", "name", "status", "timestamp", "ts", "payload"}
    assert (shown[0]["deployment_id"], shown[0]["name"]) == (str(deployment.pk), deployment.name)
    assert shown[2]["status"] == "stopped" and shown[2]["timestamp"] == shown[2]["ts"]


def test_after_is_a_cursor_and_limit_bounds_the_page(as_alice, acme):
    deployment = deployment_for(acme)
    extra = [EventFactory(deployment=deployment) for _ in range(5)]
    first = events(as_alice, deployment, limit=3).json()
    assert len(first["events"]) == 3 and first["has_more"] is True
    assert first["next_cursor"] == first["events"][-1]["id"]
    rest = events(as_alice, deployment, after=first["next_cursor"]).json()
    assert [e["id"] for e in rest["events"]] == [e.id for e in extra[2:]] and rest["has_more"] is False
    back = events(as_alice, deployment, before=rest["events"][0]["id"], limit=2).json()
    assert [e["id"] for e in back["events"]] == [first["events"][1]["id"], first["events"][2]["id"]]
    assert events(as_alice, deployment, after=rest["next_cursor"]).json()["events"] == []


def test_other_deployments_events_are_not_shown(as_alice, acme):
    deployment, other = deployment_for(acme), deployment_for(acme)
    assert {e["type"] for e in events(as_alice, deployment).json()["events"]} == {"deployment.created"}
    assert len(events(as_alice, other).json()["events"]) == 1


@pytest.mark.parametrize(("params", "field"), [
    ({"after": -1}, "after"), ({"after": "x"}, "after"), ({"before": "y"}, "before"), ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
])
def test_bad_parameters_are_a_400_naming_them(as_alice, acme, params, field):
    response = events(as_alice, deployment_for(acme), **params)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {field}
