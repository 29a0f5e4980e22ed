"""Billing in the admin: the operators' report, each tenant's ledger, credits and prices added
through the services (who and why kept), and nothing metered or paid deletable."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import LedgerEntry, Price, UsageRecord
from billing.services import usage_close_intervals
from tests.billing.factories import heartbeat, run_on
from tests.deployments.factories import NodeFactory, deployment_for
from tests.factories import LocationFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.fixture
def metered(acme, h100, node, us_east):
    """acme ran 8 GPUs on the us-east node for the last two hours, and one on another location."""
    now = timezone.now().replace(microsecond=0)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8, name="train")
    run_on(deployment.replicas.get(), node=node, started_at=now - timedelta(hours=2))
    heartbeat(node, now)
    usage_close_intervals(now=now)
    return deployment


def test_the_report_shows_revenue_gpu_hours_by_hardware_and_utilisation_per_location(operator, metered, node):
    from nodes.models import Gpu

    Gpu.objects.bulk_create([Gpu(node=node, index=i, uuid=f"GPU-r-{i}", pci_bdf=f"0000:{16 + i:02x}:00.0",
                                 model="H100", memory_mib=81559) for i in range(8)])
    page = operator.get(reverse("admin:billing_billingreport_changelist"), {"days": 7})
    assert page.status_code == 200
    report = page.context["report"]
    # Two records when the last two hours cross midnight UTC: metering cuts there.
    amount = sum(UsageRecord.objects.values_list("amount", flat=True))
    assert report["total_amount"] == amount == Decimal("39.840000")  # 16 GPU-hours x 2.49
    assert [row["gpu_hours"] for row in report["hardware"]] == [Decimal("16.00")]
    us_east = next(row for row in report["locations"] if row["location"] == "us-east")
    assert (us_east["gpus"], us_east["allocated_gpu_hours"], us_east["total_gpu_hours"]) == (8, Decimal("16.00"),
                                                                                            Decimal("1344.00"))
    assert us_east["utilisation"] == "1.2%"
    assert sum(row["amount"] for row in report["revenue"]) == amount
    assert b"Utilisation per location" in page.content


def test_a_tenants_page_shows_its_balance_and_links_its_ledger(operator, acme, metered):
    page = operator.get(reverse("admin:accounts_tenant_change", args=[acme.pk]))
    assert page.status_code == 200
    assert b"960.160000" in page.content  # 1000 - 39.84
    assert f"?tenant__id__exact={acme.pk}".encode() in page.content
    ledger = operator.get(reverse("admin:billing_ledgerentry_changelist"), {"tenant__id__exact": acme.pk})
    assert ledger.status_code == 200 and b"system:metering" in ledger.content


def test_staff_add_a_credit_with_who_and_why(operator, acme):
    response = operator.post(reverse("admin:billing_ledgerentry_add"), {
        "tenant": acme.pk, "kind": "refund", "amount": "12.50", "reason": "failed boot on gpu-3", "idempotency_key": ""})
    assert response.status_code == 302, response.content[:2000]
    entry = LedgerEntry.objects.get(tenant=acme, kind="refund")
    assert (entry.amount, entry.actor_name, entry.reason, entry.seq) == (Decimal("12.5"), "ops@example.com",
                                                                          "failed boot on gpu-3", 2)


def test_a_credit_the_service_refuses_is_a_form_error(operator, acme):
    response = operator.post(reverse("admin:billing_ledgerentry_add"), {
        "tenant": acme.pk, "kind": "credit", "amount": "-5", "reason": "oops", "idempotency_key": ""})
    assert response.status_code == 200 and b"positive amount" in response.content
    assert not LedgerEntry.objects.filter(tenant=acme, kind="credit", reason="oops").exists()


def test_ledger_entries_cannot_be_changed_or_deleted(operator, acme):
    entry = LedgerEntry.objects.get(tenant=acme)
    assert operator.post(reverse("admin:billing_ledgerentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    page = operator.post(reverse("admin:billing_ledgerentry_change", args=[entry.pk]), {
        "tenant": acme.pk, "kind": "credit", "amount": "999999", "reason": "edited"})
    assert page.status_code == 403
    assert LedgerEntry.objects.get(pk=entry.pk).amount == Decimal("1000")


def test_a_price_is_added_from_now_on_and_the_past_is_refused(operator, h100):
    location = LocationFactory(slug="eu-north")
    later = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    ok = operator.post(reverse("admin:billing_price_add"), {
        "hardware_type": h100.pk, "location": location.pk, "price_per_unit_hour": "2.1000",
        "effective_from_0": later.strftime("%Y-%m-%d"), "effective_from_1": later.strftime("%H:%M:%S"),
        "reason": "Nordic power is cheap"})
    assert ok.status_code == 302, ok.content[:2000]
    price = Price.objects.get(location=location)
    assert (price.created_by.username, price.price_per_unit_hour) == ("ops@example.com", Decimal("2.1"))
    past = timezone.now() - timedelta(days=1)
    refused = operator.post(reverse("admin:billing_price_add"), {
        "hardware_type": h100.pk, "location": "", "price_per_unit_hour": "0.0100",
        "effective_from_0": past.strftime("%Y-%m-%d"), "effective_from_1": past.strftime("%H:%M:%S"), "reason": ""})
    assert refused.status_code == 200 and b"never in the past" in refused.content
    # A scheduled price may be withdrawn before it takes effect.
    assert operator.post(reverse("admin:billing_price_delete", args=[price.pk]), {"post": "yes"}).status_code == 302


def test_a_hardware_types_price_is_read_only_once_it_exists(operator, h100):
    page = operator.get(reverse("admin:nodes_hardwaretype_change", args=[h100.pk]))
    assert b'name="price_per_gpu_hour"' not in page.content


def test_a_deployment_with_usage_cannot_be_deleted_from_the_admin_and_shows_its_cost(operator, metered):
    listing = operator.get(reverse("admin:deployments_deployment_changelist"))
    assert b"39.84" in listing.content  # and whatever accrued since the pass, up to now
    assert operator.post(reverse("admin:deployments_deployment_delete", args=[metered.pk]),
                         {"post": "yes"}).status_code == 403


def test_a_tenant_with_a_ledger_cannot_be_deleted(operator, acme):
    page = operator.post(reverse("admin:accounts_tenant_delete", args=[acme.pk]), {"post": "yes"})
    assert page.status_code == 200 and b"Cannot delete tenant" in page.content
    assert LedgerEntry.objects.filter(tenant=acme).exists()


def test_other_nodes_count_in_their_own_location(operator, acme, h100):
    elsewhere = NodeFactory(hostname="gpu-x", hardware_type=h100, location=LocationFactory(slug="ap-south"))
    assert operator.get(reverse("admin:billing_billingreport_changelist")).status_code == 200
    assert elsewhere.location.slug in [r["location"] for r in
                                       operator.get(reverse("admin:billing_billingreport_changelist")).context[
                                           "report"]["locations"]]
