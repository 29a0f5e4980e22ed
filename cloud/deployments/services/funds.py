"""Limits that act (issue 18): what happens to a tenant's deployments as its money runs out.

- The balance will run out within BALANCE_WARNING_HOURS at the current burn rate: a
  `low_balance` notice opens, each live deployment gets a `deployment.balance_low` event and
  shows the warning, until the balance or the rate changes enough.
- The balance is zero (or less) or the monthly spend limit is reached: an `exhausted` notice
  opens with a stop time FUNDS_GRACE_MINUTES away; each live deployment gets a
  `deployment.funds_exhausted` event and shows the warning, and the tenant's owners get an email
  (through the configured EMAIL_BACKEND, once the notice is committed).
- Funds come back before then (a credit, a raised limit, a new month): the notice closes, the
  stop is cancelled, each live deployment gets `deployment.funds_restored`.
- The stop time passes with funds still exhausted (checked again per deployment, as late as
  possible): each live deployment stops with status reason `insufficient_funds: ...`.

A pass reads every tenant's balance, spend and rate in a handful of queries and writes only for
the tenants whose state changes; it is safe to run twice or in several workers at once (one
open notice per tenant and kind is a database constraint, and stops are idempotent).
Creating, starting or scaling past the balance is refused earlier, with a 402 (quotas.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.selectors import owner_emails_for, tenants_in_bulk
from billing.services import (
    NoticeKind as K,
    NoticeOutcome,
    funds_notice_close,
    funds_notice_emailed,
    funds_notice_open,
)
from billing.selectors import (
    balances_for,
    burn_rates,
    funds_exhausted_by,
    funds_why_and_fix,
    open_notices_for,
    spend_this_month_by_tenant,
    spend_this_month_for,
    tenant_balance,
    usd,
)
from cloud.deployments.models import Deployment
from cloud.deployments.services.events import event_record
from cloud.deployments.services.lifecycle import deployment_stop_unpaid
from protocol.vocabulary import LIVE_STATUSES

log = logging.getLogger(__name__)
ZERO = Decimal("0")


@dataclass(frozen=True)
class Funds:
    balance: Decimal
    spent: Decimal
    limit: Decimal | None
    burn: Decimal

    @property
    def exhausted_by(self) -> str | None:
        return funds_exhausted_by(balance=self.balance, spent=self.spent, limit=self.limit)

    @property
    def hours_left(self) -> Decimal | None:
        return (max(self.balance, ZERO) / self.burn).quantize(Decimal("0.1")) if self.burn > 0 else None

    def runs_out_within(self, hours: float) -> bool:
        return self.burn > 0 and max(self.balance, ZERO) / self.burn < Decimal(str(hours))

    def why_and_fix(self) -> tuple[str, str]:
        return funds_why_and_fix(self.exhausted_by, balance=self.balance, spent=self.spent, limit=self.limit)


def _funds(tenant, *, now: datetime) -> Funds:
    return Funds(balance=tenant_balance(tenant=tenant), spent=spend_this_month_for(tenant=tenant, now=now),
                 limit=tenant.spend_limit, burn=burn_rates(tenant_ids=[tenant.pk], now=now).get(tenant.pk, ZERO))


def _live(tenant_id: int) -> list[Deployment]:
    return list(Deployment.objects.filter(tenant_id=tenant_id, deleted_at__isnull=True, status__in=LIVE_STATUSES)
                .only("id", "tenant_id", "name").order_by("created_at"))


def _tell(tenant_id: int, type_: str, payload: dict) -> None:
    for deployment in _live(tenant_id):
        event_record(tenant_id=tenant_id, deployment=deployment, type=type_, payload=payload)


def funds_enforce(*, now: datetime | None = None) -> dict:
    """One pass over every tenant with live deployments or an open notice. Returns counts."""
    now = now or timezone.now()
    live = set(Deployment.objects.filter(deleted_at__isnull=True, status__in=LIVE_STATUSES).order_by()
               .values_list("tenant_id", flat=True).distinct())
    notices = open_notices_for(tenant_ids=None)
    tenant_ids = sorted(live | set(notices))
    balances = balances_for(tenant_ids=tenant_ids)
    spent = spend_this_month_by_tenant(tenant_ids=tenant_ids, now=now)
    burns = burn_rates(tenant_ids=tenant_ids, now=now)
    tenants = tenants_in_bulk(tenant_ids=tenant_ids)
    done = {"warned": 0, "exhausted": 0, "restored": 0, "stopped": 0}
    for tenant_id in tenant_ids:
        tenant = tenants[tenant_id]
        funds = Funds(balance=balances[tenant_id], spent=spent.get(tenant_id, ZERO), limit=tenant.spend_limit,
                      burn=burns.get(tenant_id, ZERO))
        open_ = notices.get(tenant_id, {})
        if tenant_id not in live:
            _close(open_.values(), now=now)  # nothing left to warn about or stop
            continue
        exhausted = open_.get(K.EXHAUSTED)
        if funds.exhausted_by:
            if exhausted is None:
                done["exhausted"] += _exhaust(tenant, funds, now=now, low=open_.get(K.LOW_BALANCE))
            elif now >= exhausted.stop_at:
                done["stopped"] += _stop_all(tenant, exhausted, now=now)
            continue
        if exhausted is not None:
            done["restored"] += _restore(tenant, exhausted, funds, now=now)
        low = open_.get(K.LOW_BALANCE)
        runs_out_soon = funds.runs_out_within(settings.BALANCE_WARNING_HOURS)
        if runs_out_soon and low is None:
            done["warned"] += _warn(tenant, funds, now=now)
        elif low is not None and not runs_out_soon:
            _close([low], now=now)
    return done


def _close(notices, *, now: datetime, outcome: str = NoticeOutcome.RESOLVED) -> None:
    for notice in notices:
        funds_notice_close(notice=notice, now=now, outcome=outcome)


def _warn(tenant, funds: Funds, *, now: datetime) -> int:
    message = (f"low_balance: {usd(funds.balance)} left runs out in about {funds.hours_left} hours at "
               f"{usd(funds.burn)}/hour; add credit to keep deployments running")
    with transaction.atomic():
        if funds_notice_open(tenant=tenant, kind=K.LOW_BALANCE, cause="balance", message=message, now=now) is None:
            return 0
        _tell(tenant.pk, "deployment.balance_low", {
            "balance": str(funds.balance), "burn_rate_per_hour": str(funds.burn), "hours_left": str(funds.hours_left),
            "warning_hours": settings.BALANCE_WARNING_HOURS})
    return 1


def _exhaust(tenant, funds: Funds, *, now: datetime, low) -> int:
    stop_at = now + timedelta(minutes=settings.FUNDS_GRACE_MINUTES)
    why, fix = funds.why_and_fix()
    message = (f"insufficient_funds: {why}; running deployments stop at {stop_at:%Y-%m-%d %H:%M:%S} UTC "
               f"unless you {fix} before then")
    with transaction.atomic():
        notice = funds_notice_open(tenant=tenant, kind=K.EXHAUSTED, cause=funds.exhausted_by, message=message, now=now,
                                   stop_at=stop_at)
        if notice is None:
            return 0
        if low is not None:
            _close([low], now=now)
        deployments = _live(tenant.pk)
        for deployment in deployments:
            event_record(tenant_id=tenant.pk, deployment=deployment, type="deployment.funds_exhausted", payload={
                "cause": funds.exhausted_by, "balance": str(funds.balance), "spend_this_month": str(funds.spent),
                "spend_limit": str(funds.limit) if funds.limit is not None else None,
                "stop_at": stop_at.isoformat(), "grace_minutes": settings.FUNDS_GRACE_MINUTES})
        recipients = owner_emails_for(tenant=tenant)
        funds_notice_emailed(notice=notice, recipients=recipients)
        transaction.on_commit(lambda: _email(tenant, recipients, why=why, fix=fix, stop_at=stop_at,
                                             names=[d.name for d in deployments]))
    return 1


def _email(tenant, recipients: list[str], *, why: str, fix: str, stop_at: datetime, names: list[str]) -> None:
    if not recipients:
        return
    listed = "\n".join(f"  - {name}" for name in names)
    body = (f"Tenant {tenant.slug} ({tenant.name}) is out of funds: {why}.\n\n"
            f"These deployments will be stopped at {stop_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({settings.FUNDS_GRACE_MINUTES:g} minutes from this notice) unless you {fix} before then:\n{listed}\n\n"
            "Nothing is deleted: a stopped deployment can be started again once funds are back.\n")
    try:
        send_mail(f"Gantry: {tenant.slug} is out of funds; deployments stop at {stop_at:%H:%M} UTC", body,
                  settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # noqa: BLE001 - the events and warnings say it too; the stop does not wait for mail
        log.warning("could not email tenant %s's owners about exhausted funds", tenant.slug, exc_info=True)


def _restore(tenant, notice, funds: Funds, *, now: datetime) -> int:
    with transaction.atomic():
        if not funds_notice_close(notice=notice, now=now):
            return 0
        _tell(tenant.pk, "deployment.funds_restored", {
            "stop_cancelled": True, "balance": str(funds.balance), "spend_this_month": str(funds.spent),
            "spend_limit": str(funds.limit) if funds.limit is not None else None})
    return 1


def _stop_all(tenant, notice, *, now: datetime) -> int:
    """The grace period is over. Funds are checked again before each stop: a credit that
    arrives while the pass is stopping deployments saves the ones not yet stopped."""
    stopped = 0
    for deployment in _live(tenant.pk):
        funds = _funds(tenant, now=now)
        if not funds.exhausted_by:
            _restore(tenant, notice, funds, now=now)
            return stopped
        why, fix = funds.why_and_fix()
        reason = f"insufficient_funds: {why} at the end of the grace period; {fix}, then start it again"
        if deployment_stop_unpaid(deployment_id=deployment.pk, reason=reason):
            stopped += 1
    _close([notice], now=now, outcome=NoticeOutcome.STOPPED)
    return stopped
