import pytest

from tests.conftest import client_for
from tests.templates.factories import TemplateFactory


@pytest.fixture
def catalog(acme, evil):
    return {
        "global": TemplateFactory(slug="ollama"),
        "acme": TemplateFactory(slug="acme-llm", tenant=acme),
        "evil": TemplateFactory(slug="evil-llm", tenant=evil),
    }


def test_it_lists_global_and_own_private_templates(as_alice, catalog):
    response = as_alice.get("/api/v1/templates")
    assert response.status_code == 200
    body = response.json()
    slugs = [t["slug"] for t in body["templates"]]
    assert slugs == ["acme-llm", "ollama"]
    assert {t["slug"]: t["visibility"] for t in body["templates"]} == {"acme-llm": "private", "ollama": "global"}
    assert body["pagination"] == {"page": 1, "limit": 20, "total": 2, "total_pages": 1}


def test_mallory_never_sees_acmes_private_templates(as_mallory, catalog):
    slugs = [t["slug"] for t in as_mallory.get("/api/v1/templates").json()["templates"]]
    assert slugs == ["evil-llm", "ollama"]


def test_members_of_a_tenant_share_its_private_templates(as_bob, catalog):
    slugs = [t["slug"] for t in as_bob.get("/api/v1/templates").json()["templates"]]
    assert "acme-llm" in slugs


def test_it_filters_by_visibility(as_alice, catalog):
    private = as_alice.get("/api/v1/templates?visibility=private").json()["templates"]
    assert [t["slug"] for t in private] == ["acme-llm"]
    public = as_alice.get("/api/v1/templates?visibility=global").json()["templates"]
    assert [t["slug"] for t in public] == ["ollama"]


def test_it_rejects_an_unknown_visibility(as_alice, catalog):
    response = as_alice.get("/api/v1/templates?visibility=secret")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "visibility"


def test_it_paginates(as_alice, acme):
    for n in range(5):
        TemplateFactory(slug=f"t{n}", tenant=acme)
    body = as_alice.get("/api/v1/templates?limit=2&page=3").json()
    assert [t["slug"] for t in body["templates"]] == ["t4"]
    assert body["pagination"] == {"page": 3, "limit": 2, "total": 5, "total_pages": 3}
    assert as_alice.get("/api/v1/templates?limit=2&page=9").json()["templates"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "page=0", "page=abc"])
def test_bad_pagination_is_a_400_naming_the_parameter(as_alice, query):
    response = as_alice.get(f"/api/v1/templates?{query}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == query.split("=")[0]


def test_it_shows_every_documented_field(as_alice, catalog):
    template = as_alice.get("/api/v1/templates?visibility=global").json()["templates"][0]
    assert set(template) == {
        "id", "slug", "name", "description", "visibility", "image", "default_env", "entrypoint", "args",
        "traffic_port", "min_gpus", "max_gpus", "health_check_path", "created_at", "updated_at",
    }
    assert "tenant" not in template


def test_query_count_does_not_grow_with_the_page(as_alice, acme, django_assert_max_num_queries):
    for n in range(40):
        TemplateFactory(slug=f"many-{n}", tenant=acme if n % 2 else None)
    with django_assert_max_num_queries(8):
        response = as_alice.get("/api/v1/templates?limit=100")
    assert len(response.json()["templates"]) == 40


def test_it_needs_a_token(anonymous, db):
    response = anonymous.get("/api/v1/templates")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_needs_the_templates_read_scope(alice):
    response = client_for(alice, scopes="deployments:read").get("/api/v1/templates")
    assert response.status_code == 403
    assert "templates:read" in response.json()["detail"]
