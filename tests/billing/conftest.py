"""Billing tests: a hardware type at a known price, a node to run on, and after every test the
ledger check (issue 18): each tenant's entries are numbered 1..n, each `balance_after` is the
sum up to it, the balance is that sum, and every usage record has exactly its charge."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import F, Sum

from accounts.models import Tenant
from billing.models import LedgerEntry, Meter, UsageDaily, UsageRecord
from billing.selectors import tenant_balance
from tests.deployments.factories import NodeFactory
from tests.factories import HardwareTypeFactory, LocationFactory

PRICE = Decimal("2.4900")


@pytest.fixture
def h100(db):
    return HardwareTypeFactory(slug="h100", price_per_gpu_hour=PRICE, allowed_gpu_counts=[1, 8])


@pytest.fixture
def us_east(db):
    return LocationFactory(slug="us-east")


@pytest.fixture
def node(h100, us_east):
    return NodeFactory(hostname="gpu-1", hardware_type=h100, location=us_east)


def assert_ledger_consistent() -> None:
    tenants = set(LedgerEntry.objects.values_list("tenant_id", flat=True))
    for tenant_id in tenants:
        running = Decimal("0")
        for i, (seq, amount, after) in enumerate(
                LedgerEntry.objects.filter(tenant_id=tenant_id).order_by("seq").values_list("seq", "amount", "balance_after"),
                start=1):
            running += amount
            assert seq == i, f"tenant {tenant_id}: entry {seq} where {i} was due"
            assert after == running, f"tenant {tenant_id}: entry {seq} says {after}, the sum is {running}"
        assert tenant_balance(tenant=Tenant.objects.get(pk=tenant_id)) == running
    charges = LedgerEntry.objects.filter(usage_record__isnull=False)
    assert charges.count() == UsageRecord.objects.count(), "a usage record without its charge"
    assert not charges.exclude(amount=F("usage_record__amount") * -1).exists(), "a charge that is not its record's amount"
    # The caches agree with the records they sum.
    records = UsageRecord.objects.aggregate(s=Sum("amount"))["s"] or 0
    assert (UsageDaily.objects.aggregate(s=Sum("amount"))["s"] or 0) == records
    assert (Meter.objects.aggregate(s=Sum("amount"))["s"] or 0) == records


@pytest.fixture(autouse=True)
def _ledger_sums_to_the_balance(request):
    marker = request.node.get_closest_marker("django_db")
    if marker is None and not {"db", "transactional_db"} & set(request.fixturenames):
        yield
        return
    transactional = bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in request.fixturenames
    # Requested from here, so the database outlives this fixture's check.
    request.getfixturevalue("transactional_db" if transactional else "db")
    yield
    assert_ledger_consistent()
