"""billing 0008 on a database with meters and usage of replicas (issue 26): the meters keep their
rows and sums under a key of their own, stay one per replica, and metering carries on from
where they stood."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from tests.migrating import migrate, newest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]
T0 = datetime(2026, 3, 10, 8, 0, 0, tzinfo=dt_timezone.utc)


def test_existing_meters_get_a_key_and_stay_one_per_replica():
    old = migrate([("billing", "0007_meter_metered_from")])
    try:
        Tenant, Meter = old.get_model("accounts", "Tenant"), old.get_model("billing", "Meter")
        HardwareType = old.get_model("nodes", "HardwareType")
        Deployment, Replica = old.get_model("deployments", "Deployment"), old.get_model("deployments", "Replica")
        tenant = Tenant.objects.create(slug="old", name="Old")
        hw = HardwareType.objects.create(slug="h100-mig", name="8x H100", gpu_model="H100", gpu_memory_gib=80,
                                         gpus_per_node=8, allowed_gpu_counts=[1, 8], vcpus_per_gpu=16,
                                         memory_gib_per_gpu=200, price_per_gpu_hour=Decimal("2.4900"))
        deployment = Deployment.objects.create(tenant=tenant, name="d", image="x:1", gpus_per_container=1,
                                               hardware_type=hw, price_per_gpu_hour=Decimal("2.4900"))
        replicas = [Replica.objects.create(deployment=deployment, ordinal=i) for i in range(2)]
        for replica in replicas:
            Meter.objects.create(replica=replica, tenant=tenant, deployment=deployment, metered_from=T0,
                                 metered_to=T0 + timedelta(minutes=5), seconds=300, amount=Decimal("0.207500"),
                                 unit_price_seconds=Decimal("747"))

        new = migrate(newest("billing"))
        Meter = new.get_model("billing", "Meter")
        meters = list(Meter.objects.order_by("id").values_list("id", "replica_id", "volume_id", "seconds", "amount"))
        assert [(replica, volume, seconds, amount) for _, replica, volume, seconds, amount in meters] == [
            (replicas[0].pk, None, 300, Decimal("0.207500")), (replicas[1].pk, None, 300, Decimal("0.207500"))]
        assert all(isinstance(pk, int) for pk, *_ in meters)
        with pytest.raises(IntegrityError), transaction.atomic():  # still one meter per replica
            Meter.objects.create(replica_id=replicas[0].pk, tenant_id=tenant.pk, deployment_id=deployment.pk,
                                 metered_from=T0, metered_to=T0)
    finally:
        newest_apps = migrate(newest("billing"))
        # Meters without their records would fail the ledger check that runs after every test.
        newest_apps.get_model("billing", "Meter").objects.filter(tenant__slug="old").delete()
