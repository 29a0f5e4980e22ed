"""The new-deployment form's volumes: attach rows and the per-replica volume become the API's
`volumes` body, go through DeploymentCreateInput and deployment_create, and the serializer's and
the service's refusals come back at the row they are about (or at the volumes fieldset)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cloud.deployments.models import Deployment
from tests.deployments.factories import deployment_for
from volumes import services as volume_services
from volumes.models import VolumeAttachment, VolumeTemplate
from volumes.services import Requested

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(acme, us_east):
    return volume_services.volume_create(tenant=acme, actor=None, name="models", size_gib=40, location_id=us_east.pk)


def form(h100, **fields) -> dict:
    return {"source": "image", "image_url": "ghcr.io/acme/app:1.0", "hardware_id": str(h100.pk),
            "gpus_per_container": "1", "replica_count": "1", **fields}


def deployments(tenant):
    return Deployment.objects.filter(tenant=tenant, deleted_at__isnull=True)


def test_the_form_offers_the_tenants_volumes_only(alice_browser, acme, evil, us_east, models, h100):
    volume_services.volume_create(tenant=evil, actor=None, name="their-data", size_gib=5, location_id=us_east.pk)
    body = alice_browser.get("/deployments/new/").content.decode()
    assert f'<option value="{models.pk}"' in body and "models — 40 GiB" in body and "their-data" not in body
    assert 'name="replica_volume_size"' in body and 'name="replica_volume_keep"' in body


def test_it_attaches_a_volume_through_the_service(alice_browser, acme, models, h100):
    response = alice_browser.post("/deployments/new/", form(
        h100, volume_id=[str(models.pk), ""], volume_path=["/models", ""], volume_mode=["ro", "rw"]))
    (deployment,) = deployments(acme)
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    attachment = VolumeAttachment.objects.get(deployment=deployment)
    assert (attachment.volume_id, attachment.mount_path, attachment.mode) == (models.pk, "/models", "ro")
    page = alice_browser.get(response["Location"]).content.decode()
    assert f'href="/volumes/#volume-{models.pk}">models</a>' in page and "<code>/models</code>" in page


def test_it_adds_a_per_replica_volume(alice_browser, acme, h100):
    response = alice_browser.post("/deployments/new/", form(
        h100, replica_count="2", replica_volume_size="25", replica_volume_path=" /root/.ollama ",
        replica_volume_keep="on"))
    assert response.status_code == 302
    template = VolumeTemplate.objects.get(deployment__tenant=acme)
    assert (template.size_gib, template.mount_path, template.keep) == (25, "/root/.ollama", True)


def test_a_shared_read_write_volume_is_the_services_refusal_on_the_form(alice_browser, acme, models, h100):
    response = alice_browser.post("/deployments/new/", form(
        h100, replica_count="2", volume_id=[str(models.pk)], volume_path=["/models"], volume_mode=["rw"]))
    assert response.status_code == 200
    (message,) = response.context["errors"]["volumes"]
    assert "read-write" in message and "replica_count 2" in message
    assert 'id="volumes-errors"' in response.content.decode()
    assert not deployments(acme).exists() and not VolumeAttachment.objects.exists()


def test_a_volume_attached_elsewhere_read_write_is_the_409s_words(alice_browser, acme, models, h100):
    deployment_for(acme, name="holder", volumes=Requested(
        attach=[{"volume_id": str(models.pk), "mount_path": "/m", "mode": "rw"}]))
    response = alice_browser.post("/deployments/new/", form(
        h100, volume_id=[str(models.pk)], volume_path=["/models"], volume_mode=["rw"]))
    assert response.context["errors"]["form"] == [
        "Volume 'models' is attached to deployment holder; a read-write volume belongs to one deployment at a time."]
    assert deployments(acme).count() == 1


def test_another_tenants_volume_cannot_be_attached(mallory_browser, evil, models, h100):
    response = mallory_browser.post("/deployments/new/", form(
        h100, volume_id=[str(models.pk)], volume_path=["/stolen"], volume_mode=["ro"]))
    assert response.status_code == 200
    assert response.context["errors"]["volumes"] == [f"No volume {models.pk}. See GET /api/v1/volumes."]
    assert not deployments(evil).exists() and not VolumeAttachment.objects.exists()


@pytest.mark.parametrize(("fields", "key"), [
    ({"volume_id": ["VOL"], "volume_path": ["relative/path"]}, "volume_0"),
    ({"volume_id": ["VOL"], "volume_path": ["/proc/x"]}, "volume_0"),
    ({"volume_id": ["", "VOL"], "volume_path": ["", ""]}, "volume_1"),
    ({"volume_id": ["", ""], "volume_path": ["/data", ""]}, "volume_0"),  # a path without a volume
    ({"volume_id": ["VOL"], "volume_path": ["/data"], "volume_mode": ["xx"]}, "volume_0"),
    ({"volume_id": ["VOL"], "volume_path": ["/data"], "replica_volume_size": "5",
      "replica_volume_path": "/data"}, "replica_volume"),  # the same path twice
    ({"replica_volume_size": "0", "replica_volume_path": "/cache"}, "replica_volume"),
    ({"replica_volume_size": "lots", "replica_volume_path": "/cache"}, "replica_volume"),
    ({"replica_volume_size": "5"}, "replica_volume"),
])
def test_a_bad_row_is_shown_at_that_row(alice_browser, acme, models, h100, fields, key):
    fields = {k: [str(models.pk) if x == "VOL" else x for x in v] if isinstance(v, list) else v
              for k, v in fields.items()}
    response = alice_browser.post("/deployments/new/", form(h100, **fields))
    assert response.status_code == 200
    assert key in response.context["errors"], response.context["errors"]
    assert f'id="{key}-errors"' in response.content.decode()
    assert not deployments(acme).exists()


def test_the_rows_are_put_back_after_an_error(alice_browser, acme, models, h100):
    response = alice_browser.post("/deployments/new/", form(
        h100, image_url="", volume_id=[str(models.pk)], volume_path=["/models"], volume_mode=["ro"],
        replica_volume_size="7", replica_volume_path="/cache"))
    body = response.content.decode()
    assert f'<option value="{models.pk}" selected>' in body and 'value="/models"' in body
    assert '<option value="ro" selected>' in body and 'value="7"' in body and 'value="/cache"' in body


def test_the_estimate_takes_the_volume_rows(alice_browser, models, h100):
    response = alice_browser.post("/deployments/estimate/", form(
        h100, volume_id=[str(models.pk)], volume_path=["relative"], replica_volume_size="x"))
    assert response.status_code == 200 and b"volumes" in response.content


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(st.text(max_size=40), st.uuids().map(str)), max_size=3),
       paths=st.lists(st.text(st.characters(exclude_characters="\x00"), max_size=40), max_size=3),
       modes=st.lists(st.text(max_size=4), max_size=3),
       size=st.text(max_size=10), path=st.text(st.characters(exclude_characters="\x00"), max_size=30))
def test_hostile_volume_rows_are_an_answer_never_a_500(alice_browser, acme, h100, ids, paths, modes, size, path):
    response = alice_browser.post("/deployments/new/", form(h100, volume_id=ids, volume_path=paths, volume_mode=modes,
                                                            replica_volume_size=size, replica_volume_path=path))
    assert response.status_code in (200, 302)
    if response.status_code == 200:
        assert response.context["errors"] and not deployments(acme).exists()
        assert not VolumeAttachment.objects.exists()
    else:
        Deployment.objects.filter(tenant=acme).update(deleted_at="2026-01-01T00:00:00Z")
    estimate = alice_browser.post("/deployments/estimate/", form(h100, volume_id=ids, volume_path=paths,
                                                                 replica_volume_size=size, replica_volume_path=path))
    assert estimate.status_code == 200


def test_an_unknown_volume_id_is_the_same_words_as_another_tenants(alice_browser, acme, h100):
    missing = uuid.uuid4()
    response = alice_browser.post("/deployments/new/", form(h100, volume_id=[str(missing)], volume_path=["/d"]))
    assert response.context["errors"]["volumes"] == [f"No volume {missing}. See GET /api/v1/volumes."]


def test_without_volumes_the_form_points_to_the_volumes_page(alice_browser, acme, h100):
    body = alice_browser.get("/deployments/new/").content.decode()
    assert 'name="volume_id"' not in body and 'href="/volumes/">make one</a>' in body
    assert 'name="replica_volume_size"' in body  # a per-replica volume needs none made first
