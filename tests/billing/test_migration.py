"""billing 0004 / accounts 0002 on a database as it was before the ledger: each tenant's balance
becomes an opening credit, and the price book starts from the prices deployments were created
at (so nothing that ran before is re-priced)."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.migrating import migrate, newest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]
BEFORE = [("accounts", "0001_initial"), ("billing", "0003_incarnations")]


def migrate_before_volumes():
    """`tests.migrating.migrate(BEFORE)` with the volumes app unapplied as well: volumes 0001
    stands on accounts 0004 (and billing 0008 on volumes 0001), so it goes back too."""
    executor = MigrationExecutor(connection)
    targets = [*BEFORE, *(leaf for leaf in executor.loader.graph.leaf_nodes()
                          if leaf[0] not in {"accounts", "billing", "volumes"})]
    executor.migrate([*targets, ("volumes", None)])
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def test_balances_become_opening_credits_and_prices_come_from_deployments():
    old = migrate_before_volumes()
    try:
        Tenant = old.get_model("accounts", "Tenant")
        HardwareType = old.get_model("nodes", "HardwareType")
        Deployment = old.get_model("deployments", "Deployment")
        rich = Tenant.objects.create(slug="rich", name="Rich", balance=Decimal("123.456789"))
        Tenant.objects.create(slug="broke", name="Broke", balance=Decimal("0"))
        hw = HardwareType.objects.create(slug="h100-old", name="8x H100", gpu_model="H100", gpu_memory_gib=80,
                                         gpus_per_node=8, allowed_gpu_counts=[1, 8], vcpus_per_gpu=16,
                                         memory_gib_per_gpu=200, price_per_gpu_hour=Decimal("2.9900"))
        first = datetime(2026, 1, 5, 10, 0, 0, tzinfo=dt_timezone.utc)
        for i, price in enumerate(["2.4900", "2.4900", "2.6900"]):
            made = Deployment.objects.create(tenant=rich, name=f"d{i}", image="x:1", gpus_per_container=1,
                                             hardware_type=hw, price_per_gpu_hour=Decimal(price))
            Deployment.objects.filter(pk=made.pk).update(created_at=first + timedelta(days=i))

        new = migrate(newest("accounts", "billing", "volumes"))
        LedgerEntry = new.get_model("billing", "LedgerEntry")
        Price = new.get_model("billing", "Price")
        (entry,) = LedgerEntry.objects.filter(tenant__slug="rich")
        assert (entry.seq, entry.kind, entry.amount, entry.balance_after) == (
            1, "credit", Decimal("123.456789"), Decimal("123.456789"))
        assert not LedgerEntry.objects.filter(tenant__slug="broke").exists()
        history = list(Price.objects.filter(hardware_type__slug="h100-old").order_by("effective_from")
                       .values_list("effective_from", "price_per_unit_hour"))
        assert [price for _, price in history] == [Decimal("2.4900"), Decimal("2.6900"), Decimal("2.9900")]
        assert history[1][0] == first + timedelta(days=2)  # the change first seen on a deployment
    finally:
        migrate(newest("accounts", "billing", "volumes"))
