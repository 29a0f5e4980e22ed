from tests.conftest import client_for
from tests.factories import LocationFactory


def test_it_lists_locations_in_id_order(as_alice, db):
    east = LocationFactory(slug="us-east", name="US East", country="US")
    tokyo = LocationFactory(slug="ap-northeast", name="Tokyo", country="JP")
    response = as_alice.get("/api/v1/locations")
    assert response.status_code == 200
    assert response.json() == {"locations": [
        {"id": east.pk, "slug": "us-east", "name": "US East", "country": "US"},
        {"id": tokyo.pk, "slug": "ap-northeast", "name": "Tokyo", "country": "JP"},
    ]}


def test_every_tenant_sees_the_same_locations(as_alice, as_mallory, db):
    LocationFactory(slug="us-east")
    assert as_alice.get("/api/v1/locations").json() == as_mallory.get("/api/v1/locations").json()


def test_it_needs_a_token(anonymous, db):
    response = anonymous.get("/api/v1/locations")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_needs_the_templates_read_scope(alice):
    assert client_for(alice, scopes="deployments:read").get("/api/v1/locations").status_code == 403


def test_it_is_read_only(as_alice, db):
    assert as_alice.post("/api/v1/locations", {"slug": "x"}, format="json").status_code == 405


def test_query_count_is_constant(as_alice, db, django_assert_max_num_queries):
    for n in range(30):
        LocationFactory(slug=f"loc-{n}")
    with django_assert_max_num_queries(4):
        assert len(as_alice.get("/api/v1/locations").json()["locations"]) == 30
