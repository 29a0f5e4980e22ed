"""Issue 25: endpoint keys, `POST|GET /deployments/{id}/endpoint-keys` and
`DELETE /deployments/{id}/endpoint-keys/{key_id}`: the secret shown once and only its hash kept,
at most 20 live keys, events in the deployment's log, a route push on each change, and nothing
of another tenant's deployment or keys reachable."""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cloud.deployments.models import EndpointKey, Event
from cloud.deployments.routes import route_table
from cloud.deployments.services import deployment_delete
from tests.conftest import client_for
from tests.deployments.conftest import URL, post_concurrently
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(acme):
    return deployment_for(acme, name="web", traffic_port=8080)


def keys_url(deployment, key_id=None) -> str:
    return f"{URL}/{deployment.pk}/endpoint-keys" + (f"/{key_id}" if key_id is not None else "")


def make(client, deployment, name="laptop"):
    return client.post(keys_url(deployment), {"name": name}, format="json")


def hashes_of(deployment) -> tuple:
    return next(r.key_hashes for r in route_table().routes if r.label == deployment.endpoint_label)


def test_a_key_is_made_with_its_secret_shown_once(as_alice, alice, web):
    response = make(as_alice, web, "ci runner")
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert re.fullmatch(r"gk_[A-Za-z0-9_-]{43}", secret)
    assert set(body["key"]) == {"id", "name", "prefix", "created_at"}
    assert body["key"]["name"] == "ci runner" and body["key"]["prefix"] == secret[:11]

    row = EndpointKey.objects.get(pk=body["key"]["id"])
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest() and row.created_by == alice
    assert secret not in str(EndpointKey.objects.filter(pk=row.pk).values().get())  # only the hash is stored
    listed = as_alice.get(keys_url(web)).json()
    assert listed == {"keys": [body["key"]]}
    assert secret not in str(listed) and row.secret_hash not in str(listed)
    assert hashes_of(web) == (row.secret_hash,)


def test_every_key_differs(as_alice, web):
    secrets = {make(as_alice, web, f"k{i}").json()["secret"] for i in range(5)}
    assert len(secrets) == 5


def test_making_and_revoking_are_events_in_the_deployments_log(as_alice, web):
    key = make(as_alice, web).json()["key"]
    assert as_alice.delete(keys_url(web, key["id"])).status_code == 204
    events = {e.type: e.payload for e in Event.objects.filter(deployment=web, type__startswith="endpoint_key.")}
    for kind in ("endpoint_key.created", "endpoint_key.revoked"):
        assert events[kind] == {"key_id": key["id"], "name": "laptop", "prefix": key["prefix"],
                                "actor": "alice@example.com"}
    feed = as_alice.get(f"{URL}/{web.pk}/events").json()["events"]
    assert [e["type"] for e in feed if e["type"].startswith("endpoint_key.")] == list(events)


def test_a_revoked_key_leaves_the_list_and_the_route_table(as_alice, web):
    first, second = (make(as_alice, web, name).json() for name in ("a", "b"))
    assert as_alice.delete(keys_url(web, first["key"]["id"])).status_code == 204
    assert [k["id"] for k in as_alice.get(keys_url(web)).json()["keys"]] == [second["key"]["id"]]
    assert hashes_of(web) == (hashlib.sha256(second["secret"].encode()).hexdigest(),)
    assert EndpointKey.objects.get(pk=first["key"]["id"]).revoked_at is not None  # kept as history


def test_revoking_twice_is_a_404(as_alice, web):
    key_id = make(as_alice, web).json()["key"]["id"]
    assert as_alice.delete(keys_url(web, key_id)).status_code == 204
    again = as_alice.delete(keys_url(web, key_id))
    assert again.status_code == 404 and again["Content-Type"] == "application/problem+json"


def test_each_change_asks_for_a_route_push(as_alice, web, monkeypatch):
    asked = []
    monkeypatch.setattr("cloud.deployments.services.endpoint_keys.routes_changed", lambda: asked.append(1))
    key_id = make(as_alice, web).json()["key"]["id"]
    as_alice.get(keys_url(web))
    assert asked == [1]
    as_alice.delete(keys_url(web, key_id))
    assert asked == [1, 1]


def test_twenty_live_keys_at_most(as_alice, web):
    made = [make(as_alice, web, f"k{i}") for i in range(20)]
    assert {r.status_code for r in made} == {201}
    refused = make(as_alice, web, "one too many")
    assert refused.status_code == 409 and "at most 20 live endpoint keys" in refused.json()["detail"]
    assert refused.json()["live_keys"] == 20
    assert EndpointKey.objects.filter(deployment=web).count() == 20
    as_alice.delete(keys_url(web, made[0].json()["key"]["id"]))
    assert make(as_alice, web, "room again").status_code == 201  # revoked keys do not count


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_cannot_pass_twenty_live_keys(alice, acme):
    from cloud.deployments.services import endpoint_key_create

    deployment = deployment_for(acme, name="busy", traffic_port=8080)
    for i in range(18):
        endpoint_key_create(tenant=acme, actor=None, deployment_id=deployment.pk, name=f"k{i}")
    codes = sorted(r.status_code for r in post_concurrently(alice, {"name": "racer"}, times=5,
                                                              url=keys_url(deployment)))
    assert codes == [201, 201, 409, 409, 409]
    assert EndpointKey.objects.filter(deployment=deployment, revoked_at__isnull=True).count() == 20


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there", "new\nline", "nul\x00", "esc\x1b[31m", "\u202eevil",
                                  7, None, ["a"], {"a": 1}])
def test_a_bad_name_is_a_400_naming_it(as_alice, web, name):
    response = as_alice.post(keys_url(web), {"name": name}, format="json")
    assert response.status_code == 400, response.content
    assert [e["field"] for e in response.json()["errors"]] == ["name"]
    assert not EndpointKey.objects.exists()


def test_a_name_may_be_any_printable_text(as_alice, web):
    assert make(as_alice, web, "Zoë's laptop — 東京").json()["key"]["name"] == "Zoë's laptop — 東京"
    assert make(as_alice, web, "x" * 100).status_code == 201


def test_unknown_fields_and_a_missing_name_are_400s(as_alice, web):
    assert as_alice.post(keys_url(web), {"name": "a", "secret": "gk_mine"}, format="json").status_code == 400
    assert as_alice.post(keys_url(web), {}, format="json").status_code == 400
    assert as_alice.post(keys_url(web), ["name"], format="json").status_code == 400


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.dictionaries(st.sampled_from(["name", "Name", "key"]),
                                      st.one_of(st.text(max_size=120), st.integers(), st.none(), st.booleans()),
                                      max_size=2),
                      st.text(max_size=5), st.lists(st.integers(), max_size=2)))
def test_any_create_body_is_a_201_or_a_400_never_a_500(as_alice, web, body):
    response = as_alice.post(keys_url(web), body, format="json")
    assert response.status_code in (201, 400, 409), response.content
    if response.status_code == 201:
        as_alice.delete(keys_url(web, response.json()["key"]["id"]))


# -- who may ------------------------------------------------------------------------------------


def test_a_read_token_lists_but_cannot_make_or_revoke(as_alice, as_alice_readonly, web):
    key_id = make(as_alice, web).json()["key"]["id"]
    assert as_alice_readonly.get(keys_url(web)).status_code == 200
    assert make(as_alice_readonly, web).status_code == 403
    assert as_alice_readonly.delete(keys_url(web, key_id)).status_code == 403
    assert EndpointKey.objects.filter(revoked_at__isnull=True).count() == 1


def test_a_member_manages_keys_as_they_manage_deployments(bob, web):
    as_bob = client_for(bob, tenant="acme")
    key_id = make(as_bob, web).json()["key"]["id"]
    assert as_bob.delete(keys_url(web, key_id)).status_code == 204


def test_anonymous_gets_401(anonymous, web):
    assert anonymous.get(keys_url(web)).status_code == 401
    assert anonymous.post(keys_url(web), {"name": "x"}, format="json").status_code == 401


# -- another tenant ---------------------------------------------------------------------------------


def test_another_tenants_deployment_and_keys_are_404s(as_alice, as_mallory, web):
    key_id = make(as_alice, web).json()["key"]["id"]
    for response in (as_mallory.get(keys_url(web)), make(as_mallory, web), as_mallory.delete(keys_url(web, key_id))):
        assert response.status_code == 404 and "laptop" not in response.content.decode()
    assert EndpointKey.objects.filter(deployment=web, revoked_at__isnull=True).count() == 1


def test_a_key_is_revoked_only_through_its_own_deployment(as_alice, acme, web, mallory, evil):
    theirs = deployment_for(evil, name="theirs", traffic_port=8080)
    their_key = make(client_for(mallory, tenant="evil"), theirs).json()["key"]["id"]
    other = deployment_for(acme, name="other", traffic_port=8080)
    own_key = make(as_alice, other).json()["key"]["id"]
    # Alice's own deployment in the URL, another deployment's key: not found, nothing revoked.
    assert as_alice.delete(keys_url(web, their_key)).status_code == 404
    assert as_alice.delete(keys_url(web, own_key)).status_code == 404
    assert EndpointKey.objects.filter(revoked_at__isnull=True).count() == 2


@pytest.mark.parametrize("key_id", ["not-a-uuid", "12345", str(uuid.UUID(int=0)), "%00", "x" * 300])
def test_a_bad_or_unknown_key_id_is_a_404(as_alice, web, key_id):
    response = as_alice.delete(keys_url(web, key_id))
    assert response.status_code == 404 and response["Content-Type"] == "application/problem+json"


def test_a_deleted_deployments_keys_are_gone_with_it(as_alice, acme, web):
    key_id = make(as_alice, web).json()["key"]["id"]
    deployment_delete(tenant=acme, actor=None, deployment_id=web.pk)
    assert as_alice.get(keys_url(web)).status_code == 404
    assert make(as_alice, web).status_code == 404
    assert as_alice.delete(keys_url(web, key_id)).status_code == 404
    assert all(r.label != web.endpoint_label for r in route_table().routes)
