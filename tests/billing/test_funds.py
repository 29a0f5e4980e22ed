"""Limits that act, with a controlled clock: the low-balance warning, the out-of-funds grace
period with its email, the stop at its end, and its cancellation by a credit or a raised limit."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from billing.models import FundsNotice
from billing.services import ledger_credit, usage_close_intervals
from cloud.deployments.models import Deployment, Event
from cloud.deployments.services.agents import AgentSink
from cloud.deployments.services.funds import funds_enforce
from protocol.wire import ReplicaReport
from tests.billing.factories import heartbeat, run_on, set_balance
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def running(acme, h100, node, alice):
    """acme (owned by alice) runs 8 GPUs (19.92 USD/hour) since T0."""
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8, name="train")
    run_on(deployment.replicas.get(), node=node, started_at=T0, heartbeat=T0)
    return deployment


def meter(node, at):
    heartbeat(node, at)
    usage_close_intervals(now=at)


def events(deployment, type_):
    return list(Event.objects.filter(deployment=deployment, type=type_).values_list("payload", flat=True))


def shown(client, deployment) -> dict:
    return client.get(f"{URL}/{deployment.pk}").json()["deployment"]


def test_a_balance_that_runs_out_within_a_day_warns_each_live_deployment(as_alice, acme, running, settings):
    settings.BALANCE_WARNING_HOURS = 24
    set_balance(acme, Decimal("100"))  # 100 / 19.92 = about 5 hours
    funds_enforce(now=T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(minutes=2))  # once per notice, not per pass
    (payload,) = events(running, "deployment.balance_low")
    assert (payload["burn_rate_per_hour"], payload["hours_left"]) == ("19.920000", "5.0")
    (warning,) = shown(as_alice, running)["warnings"]
    assert warning["code"] == "low_balance" and "runs out in about 5.0 hours" in warning["message"]
    ledger_credit(tenant=acme, amount=Decimal("1000"), reason="top-up")
    funds_enforce(now=T0 + timedelta(minutes=3))
    assert shown(as_alice, running)["warnings"] == []
    assert FundsNotice.objects.get(kind="low_balance").outcome == "resolved"


def test_a_comfortable_balance_warns_nobody(as_alice, running):
    funds_enforce(now=T0 + timedelta(minutes=1))
    assert shown(as_alice, running)["warnings"] == [] and not FundsNotice.objects.exists()


def test_at_zero_balance_owners_are_emailed_and_deployments_stop_after_the_grace_period(
        as_alice, acme, running, node, settings, mailoutbox, django_capture_on_commit_callbacks):
    settings.FUNDS_GRACE_MINUTES = 15
    set_balance(acme, Decimal("0.50"))
    meter(node, T0 + timedelta(minutes=2))  # 2 min x 19.92/h = 0.664: the balance is now negative
    at = T0 + timedelta(minutes=2, seconds=5)
    with django_capture_on_commit_callbacks(execute=True):
        funds_enforce(now=at)
    (payload,) = events(running, "deployment.funds_exhausted")
    assert payload["cause"] == "balance" and payload["stop_at"] == (at + timedelta(minutes=15)).isoformat()
    (mail,) = mailoutbox
    assert mail.to == ["alice@example.com"] and "out of funds" in mail.subject and "train" in mail.body
    (warning,) = shown(as_alice, running)["warnings"]
    assert warning["code"] == "insufficient_funds" and warning["stop_at"] is not None

    funds_enforce(now=at + timedelta(minutes=14))
    assert Deployment.objects.get(pk=running.pk).status == "running"  # still in the grace period
    funds_enforce(now=at + timedelta(minutes=15))
    deployment = Deployment.objects.get(pk=running.pk)
    assert deployment.status == "stopping" and deployment.status_reason.startswith("insufficient_funds: balance -0.16")
    replica = deployment.replicas.get()
    assert replica.desired == "stop"
    AgentSink().report(node_id=node.pk, report=ReplicaReport(replica_id=str(replica.uid), state="stopped"))
    deployment.refresh_from_db()
    assert deployment.status == "stopped" and deployment.status_reason.startswith("insufficient_funds")
    assert FundsNotice.objects.get(kind="exhausted").outcome == "stopped"
    assert len(mailoutbox) == 1


def test_a_credit_during_the_grace_period_cancels_the_stop(as_alice, acme, running, node, mailoutbox):
    set_balance(acme, Decimal("0.10"))
    meter(node, T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(minutes=1))
    assert FundsNotice.objects.filter(kind="exhausted", closed_at__isnull=True).exists()
    ledger_credit(tenant=acme, amount=Decimal("500"), reason="paid invoice 88")
    funds_enforce(now=T0 + timedelta(minutes=5))
    (payload,) = events(running, "deployment.funds_restored")
    assert payload["stop_cancelled"] is True
    funds_enforce(now=T0 + timedelta(minutes=30))
    assert Deployment.objects.get(pk=running.pk).status == "running"
    assert FundsNotice.objects.get(kind="exhausted").outcome == "resolved"
    assert shown(as_alice, running)["warnings"] == []


def test_a_credit_that_lands_after_the_deadline_but_before_the_stop_still_saves_it(acme, running, node):
    set_balance(acme, Decimal("0.10"))
    meter(node, T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(minutes=1))
    ledger_credit(tenant=acme, amount=Decimal("500"), reason="just in time")
    funds_enforce(now=T0 + timedelta(hours=1))  # past stop_at: funds are looked at again first
    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_the_monthly_spend_limit_acts_like_an_empty_balance(as_alice, acme, running, node):
    acme.spend_limit = Decimal("1.00")
    acme.save()
    meter(node, T0 + timedelta(minutes=4))  # 1.328 USD this month
    funds_enforce(now=T0 + timedelta(minutes=4))
    (payload,) = events(running, "deployment.funds_exhausted")
    assert payload["cause"] == "spend_limit"
    assert "monthly spend limit 1.00 USD reached" in shown(as_alice, running)["warnings"][0]["message"]
    assert as_alice.patch("/api/v1/billing/limits", {"monthly_spend_limit": "100"}, format="json").status_code == 200
    funds_enforce(now=T0 + timedelta(minutes=6))
    assert events(running, "deployment.funds_restored")
    funds_enforce(now=T0 + timedelta(hours=1))
    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_a_tenant_stopped_for_funds_starts_again_once_credit_is_added(as_alice, acme, running, node):
    set_balance(acme, Decimal("0.01"))
    meter(node, T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(hours=1))
    assert Deployment.objects.get(pk=running.pk).status == "stopping"
    AgentSink().report(node_id=node.pk, report=ReplicaReport(replica_id=str(running.replicas.get().uid),
                                                              state="stopped"))
    refused = as_alice.post(f"{URL}/{running.pk}/start")
    assert refused.status_code == 402 and "estimated_hourly_cost" in refused.json()
    ledger_credit(tenant=acme, amount=Decimal("100"), reason="top-up")
    assert as_alice.post(f"{URL}/{running.pk}/start").status_code == 200


def test_scaling_up_past_the_balance_is_a_402_with_the_numbers(as_alice, acme, running):
    set_balance(acme, Decimal("30"))  # covers 1 replica (19.92/h), not 2
    response = as_alice.patch(f"{URL}/{running.pk}", {"replica_count": 2}, format="json")
    assert response.status_code == 402
    assert response.json()["estimated_hourly_cost"] == "39.840000" and response.json()["balance"] == "30.000000"


def test_notices_of_a_tenant_with_nothing_live_close_quietly(acme, running, node):
    set_balance(acme, Decimal("0.01"))
    meter(node, T0 + timedelta(minutes=1))
    funds_enforce(now=T0 + timedelta(minutes=1))
    Deployment.objects.filter(pk=running.pk).update(status="stopped")  # the customer stopped it meanwhile
    funds_enforce(now=T0 + timedelta(minutes=2))
    assert FundsNotice.objects.get().outcome == "resolved"
