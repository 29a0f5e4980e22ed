"""`/api/v1/volumes`: create, list, get and delete, against the real database; another tenant's
volume is a 404; quotas, names and scopes hold; no body makes a 500."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from cloud.deployments.models import Event
from tests.conftest import client_for
from tests.volumes.conftest import ALL
from volumes.models import Volume

pytestmark = pytest.mark.django_db

URL = "/api/v1/volumes"


def create(api, loc, name="data", size=10):
    return api.post(URL, {"name": name, "size_gib": size, "location_id": loc.id}, format="json")


def test_it_creates_a_volume_without_a_node(api, loc, acme):
    response = create(api, loc)
    assert response.status_code == 201, response.content
    body = response.json()["volume"]
    assert body["name"] == "data" and body["size_gib"] == 10 and body["state"] == "pending"
    assert body["location"] == {"id": loc.id, "slug": "us-east-1"}
    assert body["node"] is None and body["used_bytes"] is None and body["attached_to"] == []
    assert Event.objects.filter(tenant=acme, type="volume.created", payload__volume_id=body["id"]).exists()


def test_it_lists_and_gets_own_volumes_paged(api, loc):
    ids = [create(api, loc, name=f"v{i}").json()["volume"]["id"] for i in range(3)]
    page = api.get(URL, {"limit": 2}).json()
    assert page["pagination"] == {"page": 1, "limit": 2, "total": 3, "total_pages": 2}
    assert len(page["volumes"]) == 2
    assert api.get(f"{URL}/{ids[0]}").json()["volume"]["id"] == ids[0]


def test_names_are_unique_per_tenant(api, loc, mallory):
    assert create(api, loc).status_code == 201
    assert create(api, loc).status_code == 409
    assert client_for(mallory, scopes=ALL, tenant="evil").post(
        URL, {"name": "data", "size_gib": 1, "location_id": loc.id}, format="json").status_code == 201


def test_the_tenant_quota_counts_every_live_volume(api, loc, acme):
    acme.max_volume_gib = 30
    acme.save()
    assert create(api, loc, name="a", size=20).status_code == 201
    response = create(api, loc, name="b", size=11)
    assert response.status_code == 429 and response.json()["quota"] == "max_volume_gib"
    assert create(api, loc, name="b", size=10).status_code == 201


def test_another_tenant_gets_404(api, loc, mallory):
    volume_id = create(api, loc).json()["volume"]["id"]
    other = client_for(mallory, scopes=ALL, tenant="evil")
    assert other.get(f"{URL}/{volume_id}").status_code == 404
    assert other.delete(f"{URL}/{volume_id}").status_code == 404
    assert other.get(URL).json()["volumes"] == []
    assert Volume.objects.get(pk=volume_id).state == "pending"


def test_scopes_are_enforced(alice, loc):
    assert client_for(alice, scopes="deployments:read", tenant="acme").get(URL).status_code == 403
    reader = client_for(alice, scopes="volumes:read", tenant="acme")
    assert reader.get(URL).status_code == 200
    assert reader.post(URL, {"name": "x", "size_gib": 1, "location_id": loc.id}, format="json").status_code == 403
    assert client_for(None).get(URL).status_code == 401


def test_a_volume_without_a_node_is_deleted_at_once(api, loc, acme):
    volume_id = create(api, loc).json()["volume"]["id"]
    response = api.delete(f"{URL}/{volume_id}")
    assert response.status_code == 202 and response.json()["volume"]["state"] == "deleted"
    assert api.get(f"{URL}/{volume_id}").status_code == 404
    assert Event.objects.filter(tenant=acme, type="volume.deleted", payload__volume_id=volume_id).exists()
    assert create(api, loc).status_code == 201  # its name is free again


def test_unknown_location_and_fields_are_400(api, loc):
    assert api.post(URL, {"name": "x", "size_gib": 1, "location_id": loc.id + 999}, format="json").status_code == 400
    response = api.post(URL, {"name": "x", "size_gib": 1, "location_id": loc.id, "node": 1}, format="json")
    assert response.status_code == 400 and response["content-type"].startswith("application/problem+json")


bodies = st.dictionaries(
    st.sampled_from(["name", "size_gib", "location_id", "extra"]),
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.text(max_size=80),
              st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=3)),
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_body_makes_a_500(api, loc, body):
    response = api.post(URL, body, format="json")
    assert response.status_code in (201, 400, 409, 429), response.content
    Volume.objects.all().delete()
