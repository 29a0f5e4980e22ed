"""Funds notices: billing's record of a tenant running out of money. The deployments app's funds
pass decides when one opens or closes (it knows what is live) and asks here; only this module
writes `FundsNotice`.

Each write is a single conditional statement, so two passes racing never double a notice (one
open notice per tenant and kind is a database constraint) or close one twice.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction

from billing.models import FundsNotice

NoticeKind = FundsNotice.Kind
NoticeOutcome = FundsNotice.Outcome


def funds_notice_open(*, tenant, kind: str, cause: str, message: str, now: datetime,
                      stop_at: datetime | None = None) -> FundsNotice | None:
    """Opens a notice of `kind`; None when one is already open (another pass opened it a moment
    ago): the caller then leaves the rest of its step to that pass."""
    try:
        with transaction.atomic():
            return FundsNotice.objects.create(tenant=tenant, kind=kind, cause=cause, message=message[:500],
                                              opened_at=now, stop_at=stop_at)
    except IntegrityError:
        return None


def funds_notice_close(*, notice: FundsNotice, now: datetime, outcome: str = NoticeOutcome.RESOLVED) -> bool:
    """Closes `notice` if it is still open; False when another pass closed it first."""
    return bool(FundsNotice.objects.filter(pk=notice.pk, closed_at__isnull=True).update(closed_at=now,
                                                                                       outcome=outcome))


def funds_notice_emailed(*, notice: FundsNotice, recipients: list[str]) -> None:
    FundsNotice.objects.filter(pk=notice.pk).update(emailed_to=recipients)
