"""The checks every path that asks for GPUs makes (create, start, scale up), in one place.

Callers hold the tenant row lock (`tenant_lock`) for the whole transaction, so two concurrent
requests cannot both squeeze under a quota or the balance: the second waits for the first to
commit and then counts its deployment too (PostgreSQL's READ COMMITTED gives each statement after
the lock a fresh snapshot).

Both quotas and funds look at the whole tenant: a request is measured against what the tenant
already has pending or running plus the request itself, never the request alone (issue 23:
sixteen 1-GPU deployments each passed on a 10 USD credit when only the new hour was checked).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from accounts.selectors import tenant_for_update
from billing.money import money_str
from billing.prices import PriceBook
from billing.selectors import spend_this_month_for, tenant_balance
from billing.services import hourly_cost, price_quote
from cloud.deployments import selectors
from cloud.exceptions import InsufficientFunds, QuotaExceeded


def tenant_lock(*, tenant):
    """Locks the tenant row (SELECT ... FOR UPDATE) and returns it fresh from the database."""
    return tenant_for_update(tenant.pk)


def check_deployment_quota(*, tenant) -> None:
    count = selectors.deployment_count_for(tenant=tenant)
    if count + 1 > tenant.max_deployments:
        raise QuotaExceeded(
            f"Quota max_deployments reached: tenant '{tenant.slug}' has {count} of {tenant.max_deployments} "
            "deployments. Delete one or ask an operator to raise the quota.",
            extra={"quota": "max_deployments", "limit": tenant.max_deployments, "used": count},
        )


def check_gpu_quota(*, tenant, gpus_needed: int, exclude_id=None, cpu_only: bool = False) -> None:
    if cpu_only or gpus_needed <= 0:
        return
    used = selectors.gpus_in_use_for(tenant=tenant, exclude_id=exclude_id)
    if used + gpus_needed > tenant.max_gpus:
        raise QuotaExceeded(
            f"Quota max_gpus exceeded: {gpus_needed} GPU(s) requested, {used} of {tenant.max_gpus} already in use "
            "by deployments that are not stopped, failed or expired.",
            extra={"quota": "max_gpus", "limit": tenant.max_gpus, "used": used, "requested": gpus_needed},
        )


def hourly_quote(*, deployment, replica_count: int | None = None) -> Decimal:
    """What the deployment costs per hour at today's price book (start and scale-up check
    funds against this, not against the price it was created at)."""
    price = price_quote(hardware_type=deployment.hardware_type,
                        location_ids=list(deployment.locations.values_list("pk", flat=True)))
    return hourly_cost(price_per_gpu_hour=price, gpus_per_container=deployment.gpus_per_container,
                       replica_count=deployment.replica_count if replica_count is None else replica_count)


def committed_hourly_cost(*, tenant, exclude_id=None, now: datetime | None = None) -> Decimal:
    """One hour of everything the tenant has pending or running, at today's quotes (the highest
    price among each deployment's allowed locations, as a new request is quoted), leaving out
    `exclude_id` (the deployment a start or scale-up is about: its own hour is the request).

    This is the one sum of a tenant's hourly commitments the funds check reads: volumes (billed
    per provisioned GiB-hour, DESIGN section 8) add their hour here once they exist."""
    commitments = selectors.commitments_for(tenant=tenant, exclude_id=exclude_id)
    if not commitments:
        return Decimal("0")
    now = now or timezone.now()
    book = PriceBook.load(hardware_type_ids={c.hardware_type_id for c in commitments})
    return sum((hourly_cost(price_per_gpu_hour=book.quote(hardware_type_id=c.hardware_type_id,
                                                          location_ids=c.location_ids, at=now),
                            gpus_per_container=c.gpus_per_container, replica_count=c.replica_count)
                for c in commitments), Decimal("0"))


def check_funds(*, tenant, hourly_cost: Decimal, exclude_id=None) -> None:
    """Refuses new spending (402) when a monthly spend limit is set and already reached, or when
    the prepaid balance does not cover one hour of everything the tenant would then have pending
    or running: what it has now (`committed_hourly_cost`, without `exclude_id`) plus this
    request's `hourly_cost`. The caller holds the tenant lock, so the sum cannot go stale before
    the request's rows are written. A request that costs nothing is never refused for funds."""
    if tenant.spend_limit is not None:
        spent = spend_this_month_for(tenant=tenant)
        if spent >= tenant.spend_limit:
            raise InsufficientFunds(
                f"Monthly spend limit reached: {spent:.2f} of {tenant.spend_limit:.2f} USD spent this month.",
                extra={"spend_limit": str(tenant.spend_limit), "spent": str(spent)},
            )
    if hourly_cost <= 0:
        return
    balance = tenant_balance(tenant=tenant)  # the ledger's sum; the caller holds the tenant lock
    committed = committed_hourly_cost(tenant=tenant, exclude_id=exclude_id)
    if balance < committed + hourly_cost:
        raise InsufficientFunds(
            f"Balance {balance:.2f} USD does not cover one hour of what this tenant would then run: "
            f"{committed:.2f} USD/hour already pending or running plus {hourly_cost:.2f} USD/hour for this "
            f"request. Top up the balance, stop a deployment, or ask for fewer GPUs or replicas.",
            extra={"balance": money_str(balance), "committed_hourly_cost": money_str(committed),
                   "estimated_hourly_cost": money_str(hourly_cost)},
        )
