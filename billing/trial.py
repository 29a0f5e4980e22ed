"""The trial credit: a new tenant's first ledger entry, granted when accounts says it is due.

Accounts decides *whether* (an owner with a confirmed address) and sends `accounts.signals`;
billing decides *how much* (`TENANT_DEFAULT_BALANCE`) and writes it. The receivers run inside
the sender's transaction (Django signals are synchronous), so the credit commits with the tenant
or the confirmation, as when accounts called the ledger itself: a credit on commit could be lost
to a crash in between, and a tenant made without its trial never gets it.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

from billing.ledger import ledger_credit
from billing.models import LedgerEntry

TRIAL_KEY = "trial"


def trial_amount() -> Decimal:
    return Decimal(settings.TENANT_DEFAULT_BALANCE)


def trial_grant(*, tenant) -> None:
    if trial_amount() > 0:
        # The key makes a second grant (a confirmation link clicked twice) the same entry.
        ledger_credit(tenant=tenant, amount=trial_amount(), reason="trial credit for a new tenant",
                      actor_name="system:trial", key=TRIAL_KEY)


def trial_pending_for(*, tenant) -> bool:
    """A personal tenant still waiting for its owner's confirmation to get the trial credit."""
    return (tenant.personal and trial_amount() > 0
            and not LedgerEntry.objects.filter(tenant=tenant, idempotency_key=TRIAL_KEY).exists())


def on_tenant_created(sender, *, tenant, trial: bool, **kwargs) -> None:
    if trial:
        trial_grant(tenant=tenant)


def on_email_confirmed(sender, *, personal_tenant, **kwargs) -> None:
    if personal_tenant is not None:
        trial_grant(tenant=personal_tenant)
