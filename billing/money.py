"""Money arithmetic the whole control plane shares. Decimal throughout, never float; six places
(a micro-dollar) wherever an amount is stored or shown."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MONEY_DIGITS = 16
MONEY_PLACES_N = 6
MONEY_PLACES = Decimal("0.000001")
SECONDS_PER_HOUR = Decimal(3600)
# A volume is priced per GiB-month and a month is 730 hours (8760 / 12), as AWS and GCP count it.
HOURS_PER_MONTH = Decimal(730)
SECONDS_PER_MONTH = SECONDS_PER_HOUR * HOURS_PER_MONTH


def quantize_money(amount) -> Decimal:
    return Decimal(amount).quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def money_str(amount) -> str:
    """The API's, the ledger's and the CSV's spelling of an amount: a decimal string, six places."""
    return str(quantize_money(amount))


def billable_units(gpus_per_container: int) -> int:
    """What one replica is billed for per hour: its GPUs, or one slot when it has none (only
    CPU-only hardware allows 0 GPUs, and there the price is per replica-hour)."""
    return gpus_per_container if gpus_per_container > 0 else 1


def hourly_cost(*, price_per_gpu_hour: Decimal, gpus_per_container: int, replica_count: int) -> Decimal:
    """Billable units x price per unit-hour x replicas (DESIGN section 8)."""
    return quantize_money(Decimal(price_per_gpu_hour) * billable_units(gpus_per_container) * replica_count)


def volume_hourly_cost(*, price_per_gib_month: Decimal, size_gib: int) -> Decimal:
    """What a volume of `size_gib` costs per hour: GiB x the monthly price / 730."""
    return quantize_money(Decimal(price_per_gib_month) * size_gib / HOURS_PER_MONTH)


def cost_of(*, unit_price_seconds: Decimal, per: Decimal = SECONDS_PER_HOUR) -> Decimal:
    """Sum of price x units x seconds, in USD: the one rounding a metered amount gets. `per` is
    the seconds the price is for: an hour (replicas), or a month of 730 hours (volumes), so the
    division by 730 is never rounded on its own."""
    return quantize_money(Decimal(unit_price_seconds) / per)
