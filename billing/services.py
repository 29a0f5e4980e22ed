"""Money arithmetic the rest of the control plane shares. Decimal throughout, never float.

The metering task (closing running intervals into UsageRecord rows) comes with the billing
issue; what is here is what deployments need today: the hourly estimate shown at creation and
checked against the balance.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# Six places, as Deployment.total_cost and UsageRecord.amount store it.
MONEY_PLACES = Decimal("0.000001")


def quantize_money(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def billable_units(gpus_per_container: int) -> int:
    """What one replica is billed for per hour: its GPUs, or one slot when it has none (only
    CPU-only hardware allows 0 GPUs, and there the price is per replica-hour)."""
    return gpus_per_container if gpus_per_container > 0 else 1


def hourly_cost(*, price_per_gpu_hour: Decimal, gpus_per_container: int, replica_count: int) -> Decimal:
    """Billable units x price per unit-hour x replicas (DESIGN section 8)."""
    return quantize_money(Decimal(price_per_gpu_hour) * billable_units(gpus_per_container) * replica_count)


def estimate_hourly_cost(*, hardware_type, gpus_per_container: int, replica_count: int) -> Decimal:
    """What a deployment of this shape costs per hour at today's price of `hardware_type`."""
    return hourly_cost(
        price_per_gpu_hour=hardware_type.price_per_gpu_hour,
        gpus_per_container=gpus_per_container,
        replica_count=replica_count,
    )
