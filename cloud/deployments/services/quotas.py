"""The checks every path that asks for GPUs makes (create, start, scale up), in one place.

Callers hold the tenant row lock (`tenant_lock`) for the whole transaction, so two concurrent
requests cannot both squeeze under a quota: the second waits for the first to commit and then
counts its deployment too.
"""

from __future__ import annotations

from decimal import Decimal

from accounts.models import Tenant
from billing.selectors import spend_this_month_for, tenant_balance
from billing.services import hourly_cost, price_quote
from cloud.deployments import selectors
from cloud.exceptions import InsufficientFunds, QuotaExceeded


def tenant_lock(*, tenant) -> Tenant:
    """Locks the tenant row (SELECT ... FOR UPDATE) and returns it fresh from the database."""
    return Tenant.objects.select_for_update().get(pk=tenant.pk)


def check_deployment_quota(*, tenant: Tenant) -> None:
    count = selectors.deployment_count_for(tenant=tenant)
    if count + 1 > tenant.max_deployments:
        raise QuotaExceeded(
            f"Quota max_deployments reached: tenant '{tenant.slug}' has {count} of {tenant.max_deployments} "
            "deployments. Delete one or ask an operator to raise the quota.",
            extra={"quota": "max_deployments", "limit": tenant.max_deployments, "used": count},
        )


def check_gpu_quota(*, tenant: Tenant, gpus_needed: int, exclude_id=None, cpu_only: bool = False) -> None:
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


def check_funds(*, tenant: Tenant, hourly_cost: Decimal) -> None:
    """Refuses new spending (402) when the prepaid balance does not cover one hour at the
    estimated rate, or when a monthly spend limit is set and already reached."""
    if tenant.spend_limit is not None:
        spent = spend_this_month_for(tenant=tenant)
        if spent >= tenant.spend_limit:
            raise InsufficientFunds(
                f"Monthly spend limit reached: {spent:.2f} of {tenant.spend_limit:.2f} USD spent this month.",
                extra={"spend_limit": str(tenant.spend_limit), "spent": str(spent)},
            )
    balance = tenant_balance(tenant=tenant)  # the ledger's sum; the caller holds the tenant lock
    if hourly_cost > 0 and balance < hourly_cost:
        raise InsufficientFunds(
            f"Balance {balance:.2f} USD does not cover one hour of this deployment "
            f"({hourly_cost:.2f} USD/hour). Top up the balance or ask for fewer GPUs or replicas.",
            extra={"balance": str(balance), "estimated_hourly_cost": str(hourly_cost)},
        )
