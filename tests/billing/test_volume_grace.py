"""A tenant out of funds keeps its volumes VOLUME_GRACE_DAYS (an email and an event at the start),
then they are deleted through the volumes app's registered keeper, unless funds come back
first. Controlled clock: every pass is `volumes_grace_enforce(now=...)`."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from accounts.models import Tenant
from billing import grace, link
from billing.models import FundsNotice, Meter
from billing.selectors import funds_notices_expression, open_notices_for
from billing.services import ledger_credit, usage_close_intervals, volumes_grace_enforce
from cloud.deployments.models import Event
from cloud.deployments.services.funds import funds_enforce
from tests.billing.factories import RecordingKeeper, set_balance, volume_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt_timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture
def keeper():
    keeper = RecordingKeeper()
    link.register_volume_keeper(keeper)
    yield keeper
    link.register_volume_keeper(None)


@pytest.fixture
def broke(acme, alice, us_east):
    """acme (owned by alice) has two volumes since T0 and has run out of money."""
    volumes = [volume_for(acme, location=us_east, created_at=T0, size_gib=100, name="weights"),
               volume_for(acme, location=us_east, created_at=T0, size_gib=20, name="notebooks")]
    set_balance(acme, Decimal("0.01"))
    usage_close_intervals(now=T0 + timedelta(hours=2))  # 2 h of 120 GiB = 0.032877 USD: below zero
    return volumes


def feed(type_) -> list[dict]:
    return list(Event.objects.filter(type=type_, deployment__isnull=True).values_list("payload", flat=True))


def test_volumes_are_kept_through_the_grace_period_then_deleted(
        acme, broke, keeper, settings, mailoutbox, django_capture_on_commit_callbacks):
    settings.VOLUME_GRACE_DAYS = 7
    at = T0 + timedelta(hours=2, seconds=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert volumes_grace_enforce(now=at)["warned"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        volumes_grace_enforce(now=at + timedelta(minutes=1))  # once per notice, not per pass
    notice = FundsNotice.objects.get(kind="volumes")
    assert notice.stop_at == at + 7 * DAY and notice.cause == "balance"
    (payload,) = feed("volume.funds_exhausted")
    assert [v["name"] for v in payload["volumes"]] == ["weights", "notebooks"]
    assert payload["delete_at"] == (at + 7 * DAY).isoformat() and payload["grace_days"] == 7
    (mail,) = mailoutbox
    assert mail.to == ["alice@example.com"] and "weights (100 GiB)" in mail.body and "erased" in mail.body

    volumes_grace_enforce(now=at + 7 * DAY - timedelta(seconds=1))
    assert keeper.deleted == []  # still in the grace period
    assert volumes_grace_enforce(now=at + 7 * DAY)["deleted"] == 2
    assert sorted(v for v, _ in keeper.deleted) == sorted(v.pk for v in broke)
    assert all(reason.startswith("insufficient_funds: balance -0.02") for _, reason in keeper.deleted)
    notice.refresh_from_db()
    assert (notice.outcome, notice.closed_at) == ("deleted", at + 7 * DAY)
    # Billed to the pass's clock, not the keeper's: the meters end at the deletion.
    assert set(Meter.objects.filter(volume__in=broke).values_list("ends_at", flat=True)) == {at + 7 * DAY}
    volumes_grace_enforce(now=at + 8 * DAY)
    assert len(keeper.deleted) == 2 and len(mailoutbox) == 1 and len(feed("volume.funds_exhausted")) == 1


def test_a_credit_during_the_grace_period_keeps_the_volumes(acme, broke, keeper):
    volumes_grace_enforce(now=T0 + timedelta(hours=3))
    ledger_credit(tenant=acme, amount=Decimal("50"), reason="paid invoice 91")
    volumes_grace_enforce(now=T0 + timedelta(hours=4))
    (payload,) = feed("volume.funds_restored")
    assert payload["deletion_cancelled"] is True
    volumes_grace_enforce(now=T0 + 30 * DAY)
    assert keeper.deleted == [] and FundsNotice.objects.get(kind="volumes").outcome == "resolved"


def test_a_credit_after_the_deadline_but_before_the_deletion_still_saves_them(acme, broke, keeper):
    volumes_grace_enforce(now=T0 + timedelta(hours=3))
    ledger_credit(tenant=acme, amount=Decimal("50"), reason="just in time")
    # The pass read the funds before the credit; they are read again before deleting anything.
    notice = FundsNotice.objects.get(kind="volumes")
    assert grace._delete(acme, notice, [(v.pk, v.name, v.size_gib) for v in broke], now=T0 + 8 * DAY) == 0
    assert keeper.deleted == []


def test_a_volume_the_keeper_cannot_delete_is_tried_again_and_the_others_go(acme, broke, keeper):
    volumes_grace_enforce(now=T0 + timedelta(hours=3))
    keeper.fail = {broke[0].pk}
    volumes_grace_enforce(now=T0 + 8 * DAY)
    assert [v for v, _ in keeper.deleted] == [broke[1].pk]
    assert FundsNotice.objects.get(kind="volumes").closed_at is None  # open until every one is gone
    keeper.fail = set()
    volumes_grace_enforce(now=T0 + 8 * DAY + timedelta(minutes=1))
    assert sorted(v for v, _ in keeper.deleted) == sorted(v.pk for v in broke)
    assert FundsNotice.objects.get(kind="volumes").outcome == "deleted"


def test_the_monthly_spend_limit_counts_as_out_of_funds(acme, us_east, keeper):
    volume_for(acme, location=us_east, created_at=T0, size_gib=1000)
    acme.spend_limit = Decimal("0.10")
    acme.save()
    usage_close_intervals(now=T0 + timedelta(hours=8))  # 8 h of 1000 GiB = 1.095890 USD
    volumes_grace_enforce(now=T0 + timedelta(hours=8))
    notice = FundsNotice.objects.get(kind="volumes")
    assert notice.cause == "spend_limit" and "raise the spend limit" in notice.message


def test_a_tenant_with_money_or_without_volumes_is_left_alone(acme, evil, us_east, keeper):
    volume_for(acme, location=us_east, created_at=T0)  # acme has 1000 USD
    set_balance(evil, Decimal("0"))  # evil has no volumes
    volumes_grace_enforce(now=T0 + timedelta(hours=1))
    assert not FundsNotice.objects.exists()


def test_the_deployments_funds_pass_leaves_the_volumes_notice_alone(acme, broke, keeper):
    """Its tenant has nothing live, and that pass closes such a tenant's notices: only its own."""
    volumes_grace_enforce(now=T0 + timedelta(hours=3))
    funds_enforce(now=T0 + timedelta(hours=4))
    assert FundsNotice.objects.get(kind="volumes").closed_at is None
    assert open_notices_for(tenant_ids=[acme.pk]) == {}
    assert Tenant.objects.annotate(n=funds_notices_expression(tenant_ref="pk")).get(pk=acme.pk).n == []


def test_without_a_keeper_nothing_is_deleted_and_the_notice_stays(acme, broke, caplog):
    volumes_grace_enforce(now=T0 + timedelta(hours=3))
    volumes_grace_enforce(now=T0 + 8 * DAY)
    assert FundsNotice.objects.get(kind="volumes").closed_at is None
    assert "no volume keeper registered" in caplog.text
    assert Meter.objects.filter(volume__in=broke, ends_at__isnull=True).count() == 2
