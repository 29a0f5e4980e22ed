"""The tenant's monthly spend limit (`Tenant.spend_limit`: DESIGN puts it on the tenant row).
Billing owns its rules and decides every change; accounts' service stores it on the row."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from accounts.services import tenant_spend_limit_store
from billing.ledger import funds_kick
from billing.money import quantize_money
from cloud.exceptions import InvalidInput

MAX_SPEND_LIMIT = Decimal("99999999.999999")  # what Tenant.spend_limit (14 digits, 6 places) holds


@transaction.atomic
def spend_limit_set(*, tenant, limit: Decimal | None):
    """Sets (or, with None, removes) the monthly spend limit. Lowering it under what was already
    spent this month starts the out-of-funds grace period on the next funds pass; raising it
    ends one."""
    if limit is not None:
        if limit < 0 or limit > MAX_SPEND_LIMIT:
            raise InvalidInput("monthly_spend_limit", f"A spend limit is between 0 and {MAX_SPEND_LIMIT} USD.",
                               code="out_of_range")
        limit = quantize_money(limit)
    tenant, changed = tenant_spend_limit_store(tenant=tenant, limit=limit)
    if changed:
        funds_kick()
    return tenant
