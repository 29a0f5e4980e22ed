"""Volumes of a tenant out of funds (issue 26): kept for VOLUME_GRACE_DAYS, then deleted.

Funds run out (a zero balance, or the monthly spend limit reached: the same rule that stops
the tenant's deployments FUNDS_GRACE_MINUTES later) while the tenant has volumes: a `volumes`
notice opens with its deletion time, the tenant's owners get an email listing the volumes, and
the event feed gets `volume.funds_exhausted`. Funds come back before then (a credit, a raised
limit, a new month): the notice closes and the feed gets `volume.funds_restored`. The time
passes with funds still exhausted (read again just before): each volume is deleted through the
volumes app's `VolumeKeeper` (billing.link), its meter ends there, and the notice closes as
`deleted`. The grace counts from when the pass first saw the funds exhausted, so a tenant's
deployments stop minutes into it and its data stays days after.

Volumes keep costing while they are kept (their space is held): a stop is not a deletion, as on
RunPod and Fly. A pass reads every tenant's funds in a handful of queries and writes only for
tenants whose state changes; it is safe to run twice or concurrently (one open notice per
tenant and kind is a database constraint; the keeper's delete is idempotent).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.selectors import owner_emails_for, tenants_in_bulk
from billing import link
from billing.metering import volume_meter_end
from billing.models import FundsNotice
from billing.notices import funds_notice_close, funds_notice_emailed, funds_notice_open
from billing.selectors import (
    balances_for,
    funds_exhausted_by,
    funds_why_and_fix,
    live_volumes_by_tenant,
    spend_this_month_by_tenant,
    volume_notices_open,
)

log = logging.getLogger(__name__)
K, Outcome = FundsNotice.Kind, FundsNotice.Outcome
ZERO = Decimal("0")


def volumes_grace_enforce(*, now: datetime | None = None) -> dict:
    """One pass over every tenant with live volumes or an open `volumes` notice. Returns counts."""
    now = now or timezone.now()
    volumes = live_volumes_by_tenant()
    notices = volume_notices_open()
    tenant_ids = sorted(set(volumes) | set(notices))
    if not tenant_ids:
        return {"warned": 0, "restored": 0, "deleted": 0}
    balances = balances_for(tenant_ids=tenant_ids)
    spent = spend_this_month_by_tenant(tenant_ids=tenant_ids, now=now)
    tenants = tenants_in_bulk(tenant_ids=tenant_ids)
    done = {"warned": 0, "restored": 0, "deleted": 0}
    for tenant_id in tenant_ids:
        tenant, notice, mine = tenants[tenant_id], notices.get(tenant_id), volumes.get(tenant_id, [])
        if not mine:  # deleted by the customer (or by an earlier pass that then failed to close)
            funds_notice_close(notice=notice, now=now,
                               outcome=Outcome.DELETED if now >= notice.stop_at else Outcome.RESOLVED)
            continue
        cause = funds_exhausted_by(balance=balances[tenant_id], spent=spent.get(tenant_id, ZERO),
                                   limit=tenant.spend_limit)
        if cause and notice is None:
            done["warned"] += _warn(tenant, mine, cause=cause, balance=balances[tenant_id],
                                    spent=spent.get(tenant_id, ZERO), now=now)
        elif cause and now >= notice.stop_at:
            done["deleted"] += _delete(tenant, notice, mine, now=now)
        elif not cause and notice is not None:
            done["restored"] += _restore(tenant, notice, now=now)
    return done


def _warn(tenant, mine: list[tuple], *, cause: str, balance: Decimal, spent: Decimal, now: datetime) -> int:
    delete_at = (now + timedelta(days=settings.VOLUME_GRACE_DAYS)).replace(microsecond=0)
    why, fix = funds_why_and_fix(cause, balance=balance, spent=spent, limit=tenant.spend_limit)
    names = ", ".join(name for _, name, _ in mine)
    message = (f"insufficient_funds: {why}; volumes {names} are deleted with their data at "
               f"{delete_at:%Y-%m-%d %H:%M:%S} UTC unless you {fix} before then")
    with transaction.atomic():
        notice = funds_notice_open(tenant=tenant, kind=K.VOLUMES, cause=cause, message=message, now=now,
                                   stop_at=delete_at)
        if notice is None:
            return 0  # another pass opened it a moment ago and tells
        keeper = link.volume_keeper()
        payload = {"cause": cause, "balance": str(balance), "spend_this_month": str(spent),
                   "spend_limit": str(tenant.spend_limit) if tenant.spend_limit is not None else None,
                   "delete_at": delete_at.isoformat(), "grace_days": settings.VOLUME_GRACE_DAYS,
                   "volumes": [{"id": str(pk), "name": name, "size_gib": gib} for pk, name, gib in mine]}
        if keeper is not None:
            keeper.volumes_event(tenant_id=tenant.pk, type="volume.funds_exhausted", payload=payload)
        else:
            log.error("no volume keeper registered: tenant %s's volumes notice has no event", tenant.slug)
        recipients = owner_emails_for(tenant=tenant)
        funds_notice_emailed(notice=notice, recipients=recipients)
        transaction.on_commit(lambda: _email(tenant, recipients, why=why, fix=fix, delete_at=delete_at, volumes=mine))
    return 1


def _email(tenant, recipients: list[str], *, why: str, fix: str, delete_at: datetime, volumes: list[tuple]) -> None:
    if not recipients:
        return
    listed = "\n".join(f"  - {name} ({gib} GiB)" for _, name, gib in volumes)
    body = (f"Tenant {tenant.slug} ({tenant.name}) is out of funds: {why}.\n\n"
            f"Its running deployments are stopped. These volumes are kept until "
            f"{delete_at:%Y-%m-%d %H:%M:%S} UTC ({settings.VOLUME_GRACE_DAYS:g} days from this notice), and "
            f"still cost their provisioned size until then; unless you {fix} before then, they are deleted "
            f"and their data erased:\n{listed}\n")
    try:
        send_mail(f"Gantry: {tenant.slug} is out of funds; its volumes are deleted on {delete_at:%Y-%m-%d} UTC",
                  body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # noqa: BLE001 - the notice and the event say it too
        log.warning("could not email tenant %s's owners about its volumes", tenant.slug, exc_info=True)


def _restore(tenant, notice: FundsNotice, *, now: datetime) -> int:
    with transaction.atomic():
        if not funds_notice_close(notice=notice, now=now):
            return 0
        keeper = link.volume_keeper()
        if keeper is not None:
            keeper.volumes_event(tenant_id=tenant.pk, type="volume.funds_restored",
                                 payload={"deletion_cancelled": True, "delete_at": notice.stop_at.isoformat()})
    return 1


def _delete(tenant, notice: FundsNotice, mine: list[tuple], *, now: datetime) -> int:
    """The grace period is over. Funds are read again first: a credit that arrived since the
    pass began saves the volumes. Each volume is deleted in its own transaction, so one the
    keeper refuses does not keep the others; the notice stays open until every one is gone, and
    the next pass tries the rest again."""
    keeper = link.volume_keeper()
    if keeper is None:
        log.error("no volume keeper registered: tenant %s's volumes are past their grace period and kept",
                  tenant.slug)
        return 0
    balance = balances_for(tenant_ids=[tenant.pk])[tenant.pk]
    spent = spend_this_month_by_tenant(tenant_ids=[tenant.pk], now=now).get(tenant.pk, ZERO)
    cause = funds_exhausted_by(balance=balance, spent=spent, limit=tenant.spend_limit)
    if not cause:
        _restore(tenant, notice, now=now)
        return 0
    why, fix = funds_why_and_fix(cause, balance=balance, spent=spent, limit=tenant.spend_limit)
    reason = f"insufficient_funds: {why} at the end of the volumes' grace period ({settings.VOLUME_GRACE_DAYS:g} days)"
    deleted, failed = 0, 0
    for volume_id, name, _ in mine:
        try:
            with transaction.atomic():
                # Billed to the pass's clock, whatever clock the keeper's own delete reads (its
                # end, first, stands: a meter's end never moves).
                volume_meter_end(volume_id=volume_id, at=now)
                keeper.volume_delete_unpaid(volume_id=volume_id, reason=reason)
            deleted += 1
        except Exception:  # noqa: BLE001 - the others go on; this one is tried again next pass
            failed += 1
            log.exception("could not delete volume %s (%s) of tenant %s at the end of its grace period",
                          volume_id, name, tenant.slug)
    if not failed:
        funds_notice_close(notice=notice, now=now, outcome=Outcome.DELETED)
    return deleted
