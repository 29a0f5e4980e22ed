"""A volume's meter runs from its create to its delete through the volumes app's own services
(the API's), and billing's grace period deletes an unpaid volume through the keeper the volumes
app registers, attached or not."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import link as billing_link
from billing.metering import usage_close_intervals
from billing.models import Meter, UsageRecord
from tests.deployments.conftest import h100  # noqa: F401
from tests.deployments.factories import deployment_for
from volumes import services
from volumes.keeper import VolumeKeeper
from volumes.models import Volume, VolumeAttachment

pytestmark = pytest.mark.django_db



def test_create_opens_the_meter_and_delete_ends_it_where_it_was_asked(api, loc):
    made = api.post("/api/v1/volumes", {"name": "data", "size_gib": 100, "location_id": loc.id}, format="json")
    assert made.status_code == 201, made.content
    volume = Volume.objects.get(pk=made.json()["volume"]["id"])
    meter = Meter.objects.get(volume=volume)
    # From its creation, in whole seconds (the first one it lived all of).
    assert meter.ends_at is None and 0 <= (meter.metered_from - volume.created_at).total_seconds() < 1

    assert api.delete(f"/api/v1/volumes/{volume.pk}").status_code in (202, 204)
    meter.refresh_from_db()
    assert meter.ends_at is not None and meter.ends_at <= timezone.now() + timedelta(seconds=1)
    # A pass later than the delete bills up to the delete, not to the pass.
    usage_close_intervals(now=meter.ends_at + timedelta(hours=2))
    billed = sum(r.seconds for r in UsageRecord.objects.filter(volume=volume))
    assert billed == int((meter.ends_at - meter.metered_from).total_seconds())


def test_the_keeper_is_registered_and_deletes_an_unpaid_volume_attached_to_a_stopped_deployment(acme, loc, h100):
    assert isinstance(billing_link.volume_keeper(), VolumeKeeper)
    volume = services.volume_create(tenant=acme, actor=None, name="weights", size_gib=10, location_id=loc.id)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1, name="ollama")
    VolumeAttachment.objects.create(volume=volume, deployment=deployment, mount_path="/data", mode="rw")
    deployment.replicas.update(desired="stop", state="stopped")

    billing_link.volume_keeper().volume_delete_unpaid(volume_id=volume.pk, reason="funds exhausted for 7 days")
    volume.refresh_from_db()
    assert volume.state == Volume.State.DELETED  # never placed: no file to erase
    assert Meter.objects.get(volume=volume).ends_at is not None
    assert not VolumeAttachment.objects.filter(volume=volume, deployment=deployment).exists()


def test_volumes_made_before_metering_knew_them_are_found_by_the_keeper(acme, loc):
    volume = services.volume_create(tenant=acme, actor=None, name="old", size_gib=5, location_id=loc.id)
    Meter.objects.filter(volume=volume).delete()
    found = billing_link.volume_keeper().volumes_without_meter()
    assert [(v["volume_id"], v["tenant_id"]) for v in found] == [(volume.pk, acme.pk)]
    usage_close_intervals(now=timezone.now() + timedelta(minutes=1))
    assert Meter.objects.filter(volume=volume).exists()
    assert Decimal(0) <= sum(r.amount for r in UsageRecord.objects.filter(volume=volume))
