"""Responses match the OpenAPI document (what the CI schemathesis run checks), for each
deployments operation: success bodies and problem documents alike."""

import json

import jsonschema
import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.billing.factories import set_balance
from tests.deployments.conftest import URL
from tests.deployments.factories import LogLineFactory, deployment_for, place_running

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def openapi(django_db_blocker):
    with django_db_blocker.unblock():
        return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


def check(openapi, response, path: str, method: str):
    operation = openapi["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method} {path} answered an undocumented {response.status_code}"
    (media,) = documented["content"].values()
    schema = {**media["schema"], "components": openapi["components"]}
    jsonschema.validate(response.json(), schema, cls=jsonschema.Draft202012Validator)


def test_every_operation_answers_as_documented(openapi, as_alice, acme, body, ollama):
    created = as_alice.post(URL, body(duration_hours=2, location_ids=[], secret_env_variables={"K": "v"}), format="json")
    check(openapi, created, "/api/v1/deployments", "post")
    check(openapi, as_alice.post(URL, {"template_id": "ollama"}, format="json"), "/api/v1/deployments", "post")
    check(openapi, as_alice.post(URL, body(replica_count=0), format="json"), "/api/v1/deployments", "post")
    dep_id = created.json()["deployment"]["id"]
    running = deployment_for(acme, replica_count=2)
    place_running(running)
    LogLineFactory(deployment=running, replica=running.replicas.first())
    check(openapi, as_alice.get(URL), "/api/v1/deployments", "get")
    check(openapi, as_alice.get(URL, {"status": "nope"}), "/api/v1/deployments", "get")
    for ident in (dep_id, running.pk):
        check(openapi, as_alice.get(f"{URL}/{ident}"), "/api/v1/deployments/{id}", "get")
        for sub in ("replicas", "logs", "events", "metrics/requests"):
            check(openapi, as_alice.get(f"{URL}/{ident}/{sub}"), f"/api/v1/deployments/{{id}}/{sub}", "get")
    check(openapi, as_alice.get(f"{URL}/nope"), "/api/v1/deployments/{id}", "get")
    check(openapi, as_alice.get(f"{URL}/{dep_id}/metrics/requests?minutes=0"), "/api/v1/deployments/{id}/metrics/requests",
          "get")
    check(openapi, as_alice.patch(f"{URL}/{dep_id}", {"replica_count": 2}, format="json"), "/api/v1/deployments/{id}", "patch")
    check(openapi, as_alice.post(f"{URL}/{running.pk}/restart"), "/api/v1/deployments/{id}/restart", "post")
    check(openapi, as_alice.post(f"{URL}/{dep_id}/stop"), "/api/v1/deployments/{id}/stop", "post")
    check(openapi, as_alice.post(f"{URL}/{dep_id}/stop"), "/api/v1/deployments/{id}/stop", "post")  # 409
    check(openapi, as_alice.post(f"{URL}/{dep_id}/start"), "/api/v1/deployments/{id}/start", "post")
    check(openapi, as_alice.delete(f"{URL}/{dep_id}"), "/api/v1/deployments/{id}", "delete")
    set_balance(acme, 0)
    check(openapi, as_alice.post(URL, body(), format="json"), "/api/v1/deployments", "post")  # 402
