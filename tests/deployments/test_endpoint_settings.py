"""Issue 25: a deployment's endpoint access (private by default; `share.is_public` is the sandbox
seed's alias), request timeout and body limit at the gateway, on create and PATCH; every change
of one asks for a route push; rows from before the gateway were migrated to public."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cloud.deployments.models import Deployment, Event
from cloud.deployments.services import deployment_delete
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for
from tests.migrating import migrate, newest

pytestmark = pytest.mark.django_db


@pytest.fixture
def pushes(monkeypatch):
    """The route pushes asked for (routes_changed), counted where they are asked."""
    asked = []
    for module in ("create", "change"):
        monkeypatch.setattr(f"cloud.deployments.services.{module}.routes_changed", lambda: asked.append(1))
    return asked


def shown(response) -> dict:
    assert response.status_code in (200, 201), response.content
    return response.json()["deployment"]


def test_a_new_deployment_is_private_with_ten_minutes_and_a_gib(as_alice, body):
    made = shown(as_alice.post(URL, body(traffic_port=8080), format="json"))
    assert (made["endpoint_access"], made["request_timeout_s"], made["max_request_body_mb"]) == ("private", 600, 1024)
    assert made["endpoints"][0]["access"] == "private"


@pytest.mark.parametrize(("extra", "access"), [
    ({"endpoint_access": "public"}, "public"),
    ({"share": {"is_public": True}}, "public"),
    ({"share": {"is_public": False}}, "private"),
    ({"endpoint_access": "public", "share": {"is_public": True}}, "public"),
    ({"endpoint_access": "private", "share": {"is_public": False}}, "private"),
])
def test_create_takes_the_access_under_either_spelling(as_alice, body, extra, access):
    made = shown(as_alice.post(URL, body(traffic_port=8080, **extra), format="json"))
    assert made["endpoint_access"] == access
    assert Deployment.objects.get(pk=made["id"]).endpoint_access == access


def test_create_takes_the_limits(as_alice, body):
    made = shown(as_alice.post(URL, body(request_timeout_s=3600, max_request_body_mb=16), format="json"))
    assert (made["request_timeout_s"], made["max_request_body_mb"]) == (3600, 16)


@pytest.mark.parametrize("extra", [
    {"endpoint_access": "public", "share": {"is_public": False}},
    {"endpoint_access": "private", "share": {"is_public": True}},
])
def test_the_two_spellings_disagreeing_is_a_400_naming_both(as_alice, body, extra):
    response = as_alice.post(URL, body(**extra), format="json")
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "endpoint_access" and "share.is_public" in error["message"]
    assert Deployment.objects.count() == 0


@pytest.mark.parametrize(("field", "value"), [
    ("endpoint_access", "open"), ("endpoint_access", "PUBLIC"), ("endpoint_access", True), ("endpoint_access", ["public"]),
    ("share", True), ("share", {"is_public": "yes"}), ("share", {"is_public": 1}), ("share", {}),
    ("share", {"is_public": True, "domain": "x.example.com"}),
    ("request_timeout_s", 0), ("request_timeout_s", 86401), ("request_timeout_s", "600"), ("request_timeout_s", 1.5),
    ("max_request_body_mb", 0), ("max_request_body_mb", 1048577), ("max_request_body_mb", True),
])
def test_a_bad_value_is_a_400_naming_the_field(as_alice, body, field, value):
    response = as_alice.post(URL, body(**{field: value}), format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert any(e["field"] == field or e["field"].startswith(field + ".") for e in response.json()["errors"])
    assert Deployment.objects.count() == 0


def test_creating_a_deployment_with_a_port_asks_for_a_push(acme, pushes):
    deployment_for(acme, name="batch")
    assert pushes == []  # nothing to route
    deployment_for(acme, name="web", traffic_port=8080)
    assert pushes == [1]


# -- PATCH -------------------------------------------------------------------------------------------


def test_patch_changes_each_setting_records_it_and_asks_for_a_push(as_alice, acme, pushes):
    deployment = deployment_for(acme, traffic_port=8080)
    pushes.clear()
    response = as_alice.patch(f"{URL}/{deployment.pk}", {"share": {"is_public": True}, "request_timeout_s": 30,
                                                         "max_request_body_mb": 2}, format="json")
    made = shown(response)
    assert (made["endpoint_access"], made["request_timeout_s"], made["max_request_body_mb"]) == ("public", 30, 2)
    assert made["endpoints"][0]["access"] == "public"
    assert pushes == [1]
    event = Event.objects.filter(deployment=deployment, type="deployment.updated").latest("id")
    assert set(event.payload["fields"]) == {"endpoint_access", "request_timeout_s", "max_request_body_mb"}

    shown(as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "public"}, format="json"))
    assert pushes == [1]  # nothing changed, nothing to push
    shown(as_alice.patch(f"{URL}/{deployment.pk}", {"env": {"A": "1"}}, format="json"))
    assert pushes == [1]  # env is not in the route table
    shown(as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "private"}, format="json"))
    assert pushes == [1, 1]


def test_patch_refuses_disagreeing_spellings_and_changes_nothing(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=8080)
    response = as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "private", "share": {"is_public": True},
                                                         "request_timeout_s": 5}, format="json")
    assert response.status_code == 400 and "share.is_public" in response.json()["errors"][0]["message"]
    deployment.refresh_from_db()
    assert (deployment.endpoint_access, deployment.request_timeout_s) == ("private", 600)


def test_another_tenants_deployment_cannot_be_opened(as_mallory, acme):
    deployment = deployment_for(acme, traffic_port=8080)
    response = as_mallory.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "public"}, format="json")
    assert response.status_code == 404
    deployment.refresh_from_db()
    assert deployment.endpoint_access == "private"


_SETTINGS = st.fixed_dictionaries({}, optional={
    "endpoint_access": st.one_of(st.sampled_from(["private", "public"]), st.text(max_size=10), st.integers(),
                                 st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
    "share": st.one_of(st.none(), st.booleans(), st.text(max_size=5),
                       st.fixed_dictionaries({}, optional={"is_public": st.one_of(st.booleans(), st.integers(),
                                                                                  st.text(max_size=3), st.none())}),
                       st.dictionaries(st.text(max_size=8), st.booleans(), max_size=2)),
    "request_timeout_s": st.one_of(st.integers(min_value=-2, max_value=2**64), st.floats(allow_nan=False, allow_infinity=False),
                                   st.text(max_size=5), st.none(), st.booleans()),
    "max_request_body_mb": st.one_of(st.integers(min_value=-2, max_value=2**64), st.text(max_size=5), st.none()),
})


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=_SETTINGS)
def test_any_settings_in_a_create_body_are_201_or_a_400_never_a_500(as_alice, body, acme, extra):
    response = as_alice.post(URL, {**body(traffic_port=8080), **extra}, format="json")
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert response.json()["errors"], response.content
        return
    made = response.json()["deployment"]
    assert made["endpoint_access"] in ("private", "public") and 1 <= made["request_timeout_s"] <= 86400
    assert 1 <= made["max_request_body_mb"] <= 1048576
    deployment_delete(tenant=acme, actor=None, deployment_id=made["id"])  # quota and funds stay free


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=_SETTINGS)
def test_any_settings_in_a_patch_body_are_200_or_a_400_never_a_500(as_alice, acme, extra):
    deployment = Deployment.objects.filter(tenant=acme, name="patched").first() or deployment_for(
        acme, name="patched", traffic_port=8080)
    response = as_alice.patch(f"{URL}/{deployment.pk}", extra, format="json")
    assert response.status_code in (200, 400), response.content


# -- the migration --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_the_migration_makes_existing_deployments_public_and_new_ones_private():
    old = migrate([("deployments", "0009_endpoint_label_required")])
    try:
        Tenant = old.get_model("accounts", "Tenant")
        HardwareType = old.get_model("nodes", "HardwareType")
        Old = old.get_model("deployments", "Deployment")
        tenant = Tenant.objects.create(slug="old", name="Old")
        hw = HardwareType.objects.create(slug="h-old", name="H", gpu_model="H100", gpu_memory_gib=80, gpus_per_node=8,
                                         allowed_gpu_counts=[1], vcpus_per_gpu=16, memory_gib_per_gpu=200,
                                         price_per_gpu_hour="2.0")
        Old.objects.create(tenant=tenant, name="before", endpoint_label="before-aaaaaa", image="x:1",
                           gpus_per_container=1, hardware_type=hw, price_per_gpu_hour="2.0", traffic_port=80)

        new = migrate(newest("deployments"))
        New = new.get_model("deployments", "Deployment")
        before = New.objects.get(name="before")
        assert (before.endpoint_access, before.request_timeout_s, before.max_request_body_mb) == ("public", 600, 1024)
        after = New.objects.create(tenant_id=tenant.pk, name="after", image="x:1", gpus_per_container=1,
                                   hardware_type_id=hw.pk, price_per_gpu_hour="2.0", endpoint_label="after-aaaaaa")
        assert New.objects.get(pk=after.pk).endpoint_access == "private"
    finally:
        migrate(newest("deployments"))
