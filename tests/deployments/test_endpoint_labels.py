"""Issue 25, endpoint names: every deployment gets a DNS label at create, made from its name and
a random suffix, unique over every row ever written (so never reused), and never changed by
anything that happens to the deployment afterwards."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given, settings as hypothesis_settings, strategies as st

from cloud.deployments import labels
from cloud.deployments.models import Deployment
from cloud.deployments.services import (
    deployment_delete,
    deployment_restart,
    deployment_start,
    deployment_stop,
    deployment_update,
    node_lost,
)
from cloud.settings import env_endpoint_domain
from tests.deployments.conftest import URL
from tests.deployments.factories import DeploymentFactory, deployment_for, place_running
from tests.migrating import migrate, newest

LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@given(st.text(max_size=200))
def test_a_label_is_one_dns_label_made_from_the_name(name):
    label = labels.endpoint_label(name)
    assert LABEL_RE.match(label) and len(label) <= 63
    base, suffix = label.rsplit("-", 1)
    assert re.fullmatch(r"[a-z2-7]{6}", suffix)
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    assert readable.startswith(base) or (base == "deployment" and not readable)


def test_examples():
    assert labels.endpoint_label("My Ollama!")[:-6] == "my-ollama-"
    assert labels.endpoint_label("--__--")[:-6] == "deployment-"
    assert len(labels.endpoint_label("a" * 100)) == 63
    assert labels.label_base("a" * 55 + "-" + "b" * 10) == "a" * 55  # no '-' left before the suffix's


def test_labels_of_one_name_differ():
    made = {labels.endpoint_label("same") for _ in range(2000)}
    assert len(made) == 2000


@hypothesis_settings(max_examples=25, deadline=None)
@given(name=st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=100))  # PostgreSQL refuses NUL
@pytest.mark.django_db
def test_create_gives_every_deployment_its_own_label(name):
    from tests.factories import TenantFactory

    tenant = TenantFactory()
    made = deployment_for(tenant, name=name)
    made.refresh_from_db()
    assert LABEL_RE.match(made.endpoint_label)
    assert made.endpoint_label.rsplit("-", 1)[0] == labels.label_base(name)


def test_a_deleted_deployments_label_is_never_given_again(acme):
    seen = set()
    for _ in range(5):
        deployment = deployment_for(acme, name="again")
        assert deployment.endpoint_label not in seen
        seen.add(deployment.endpoint_label)
        deployment_delete(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert Deployment.objects.filter(endpoint_label__in=seen).count() == 5


def test_a_taken_label_is_retried_not_refused(acme, monkeypatch):
    taken = DeploymentFactory(tenant=acme, name="first").endpoint_label
    answers = iter([taken, "second-aaaaaa"])
    monkeypatch.setattr("cloud.deployments.services.create.endpoint_label", lambda name: next(answers))
    assert deployment_for(acme, name="second").endpoint_label == "second-aaaaaa"


def test_rows_written_directly_get_one_too(acme, h100):
    rows = Deployment.objects.bulk_create([
        DeploymentFactory.build(tenant=acme, name=f"bulk {i}", hardware_type=h100) for i in range(3)])
    assert [r.endpoint_label[:-7] for r in rows] == ["bulk-0", "bulk-1", "bulk-2"]


def test_nothing_that_happens_to_a_deployment_changes_its_label(acme):
    deployment = deployment_for(acme, name="steady", traffic_port=8080)
    label = deployment.endpoint_label

    def unchanged():
        assert Deployment.objects.get(pk=deployment.pk).endpoint_label == label

    (replica,) = place_running(deployment)
    deployment_restart(tenant=acme, actor=None, deployment_id=deployment.pk)
    unchanged()
    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk,
                      changes={"replica_count": 2, "env": {"A": "1"}, "stop_grace_seconds": 30})
    unchanged()
    node_lost(node_id=replica.node_id)
    unchanged()
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    Deployment.objects.filter(pk=deployment.pk).update(status=Deployment.Status.STOPPED)
    deployment_start(tenant=acme, actor=None, deployment_id=deployment.pk)
    unchanged()


def test_the_api_shows_the_name_and_patch_cannot_change_it(as_alice, acme, settings):
    settings.GANTRY_ENDPOINT_DOMAIN = "apps.example.com"
    deployment = deployment_for(acme, name="shown")
    shown = as_alice.get(f"{URL}/{deployment.pk}").json()["deployment"]
    assert shown["endpoint_label"] == deployment.endpoint_label
    assert shown["endpoint_host"] == f"{deployment.endpoint_label}.apps.example.com"
    listed = as_alice.get(URL).json()
    assert [d["endpoint_label"] for d in listed["deployments"]] == [deployment.endpoint_label]
    response = as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_label": "mine"}, format="json")
    assert response.status_code == 400  # not a field a PATCH takes
    assert Deployment.objects.get(pk=deployment.pk).endpoint_label == deployment.endpoint_label


# -- the domain setting ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("", "gantry.localhost"), ("Apps.Example.COM.", "apps.example.com"),
                                             ("localhost", "localhost")])
def test_the_domain_setting_takes_a_dns_name(monkeypatch, value, expected):
    monkeypatch.setenv("GANTRY_ENDPOINT_DOMAIN", value)
    assert env_endpoint_domain("GANTRY_ENDPOINT_DOMAIN", "gantry.localhost") == expected


@pytest.mark.parametrize("value", ["https://apps.example.com", "apps..example.com", "-apps.example.com",
                                   "apps_x.example.com", "a" * 64 + ".com", ("a" * 60 + ".") * 3 + "a" * 10])
def test_a_bad_domain_setting_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("GANTRY_ENDPOINT_DOMAIN", value)
    with pytest.raises(ImproperlyConfigured, match="GANTRY_ENDPOINT_DOMAIN must be a DNS name"):
        env_endpoint_domain("GANTRY_ENDPOINT_DOMAIN", "gantry.localhost")


# -- the migration ---------------------------------------------------------------------------------


BEFORE = [("deployments", "0007_replica_booted_at")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_the_migration_labels_existing_deployments_deleted_ones_too():
    old = migrate(BEFORE)
    try:
        Tenant = old.get_model("accounts", "Tenant")
        HardwareType = old.get_model("nodes", "HardwareType")
        Old = old.get_model("deployments", "Deployment")
        tenant = Tenant.objects.create(slug="old", name="Old")
        hw = HardwareType.objects.create(slug="h-old", name="H", gpu_model="H100", gpu_memory_gib=80, gpus_per_node=8,
                                         allowed_gpu_counts=[1], vcpus_per_gpu=16, memory_gib_per_gpu=200,
                                         price_per_gpu_hour="2.0")
        for name in ["My Ollama", "My Ollama", "???"]:
            Old.objects.filter(name=name).update(deleted_at="2026-01-01T00:00:00Z")  # the first is deleted
            Old.objects.create(tenant=tenant, name=name, image="x:1", gpus_per_container=1, hardware_type=hw,
                               price_per_gpu_hour="2.0")

        new = migrate(newest("deployments"))
        found = sorted(new.get_model("deployments", "Deployment").objects.values_list("endpoint_label", flat=True))
        assert len(set(found)) == 3 and all(LABEL_RE.match(label) for label in found)
        assert [label[:-7] for label in found] == ["deployment", "my-ollama", "my-ollama"]
    finally:
        migrate(newest("deployments"))
