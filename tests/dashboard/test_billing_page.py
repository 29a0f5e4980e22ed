from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from billing.models import UsageDaily
from tests.deployments.factories import deployment_for


def _usage(tenant, deployment, *, days_ago: int, amount: str, gpu_seconds: int):
    UsageDaily.objects.create(tenant=tenant, deployment=deployment, hardware_type=deployment.hardware_type,
                              day=timezone.now().date() - timedelta(days=days_ago), amount=Decimal(amount),
                              seconds=gpu_seconds, gpu_seconds=gpu_seconds, records=1)


def test_it_shows_balance_usage_and_a_chart(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="trainer")
    _usage(acme, deployment, days_ago=0, amount="12.50", gpu_seconds=5 * 3600)
    page = alice_browser.get("/billing/")
    body = page.content.decode()
    assert page.status_code == 200
    assert 'data-testid="balance">$1000.00' in body
    assert "<svg" in body and "12.50, 5.00 GPU-hours" in body and "trainer" in body


def test_an_empty_month_says_so(alice_browser, acme):
    assert b"No usage in the last 30 days." in alice_browser.get("/billing/").content


def test_the_statement_csv_is_the_apis_format(alice_browser, acme):
    month = timezone.now().strftime("%Y-%m")
    response = alice_browser.get(f"/billing/statements/{month}.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert b"".join(response.streaming_content).startswith(b"record_id,")


def test_another_tenants_usage_is_not_shown(mallory_browser, acme, h100):
    deployment = deployment_for(acme, name="trainer")
    _usage(acme, deployment, days_ago=0, amount="12.50", gpu_seconds=3600)
    assert b"trainer" not in mallory_browser.get("/billing/").content


def test_a_volume_row_says_volume_and_its_gib_hours(alice_browser, acme):
    from tests.factories import LocationFactory
    from volumes import services as volume_services

    volume = volume_services.volume_create(tenant=acme, actor=None, name="weights", size_gib=100,
                                           location_id=LocationFactory(slug="us-east-1").pk)
    UsageDaily.objects.create(tenant=acme, volume_id=volume.pk, location_id=volume.location_id,
                              day=timezone.now().date(), amount=Decimal("0.27"), seconds=7200,
                              gib_seconds=100 * 7200, records=1)
    body = alice_browser.get("/billing/").content.decode()
    assert "volume weights" in body and "200.00 GiB-hours" in body and "None" not in body
