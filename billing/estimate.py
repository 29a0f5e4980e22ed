"""What volumes would cost, for the estimates (issue 26): a volume's own hourly cost, and the
per-replica volumes a deployment would create (`volumes: [{"size_gib": ..., "mount_path": ...}]`
without a `volume_id`: each ordinal gets its own). A volume that already exists and is attached
adds nothing: it is billed from its creation, attached or not.

Prices are per provisioned GiB-month; an hour is that / 730, rounded once to six places. Where
a deployment may be placed in several locations, the quote is the dearest of them, as
`PriceBook.quote` does for GPUs: an estimate never under-states what the funds check needs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.money import HOURS_PER_MONTH, money_str, quantize_money
from billing.prices import PriceBook


def volume_estimate(*, size_gib: int, location_id: int, at: datetime | None = None) -> dict:
    """A volume of `size_gib` in a location: its price per GiB-month there, and what it costs
    per hour and per (730-hour) month."""
    book = PriceBook.load(hardware_type_ids=set(), volumes=True)
    price = book.volume_at(location_id=location_id, at=at or timezone.now())
    return {"size_gib": size_gib, "price_per_gib_month": f"{price:.4f}",
            "hourly_cost": money_str(price * size_gib / HOURS_PER_MONTH),
            "monthly_cost": money_str(price * size_gib)}


def per_replica_volumes_estimate(*, sizes_gib: list[int], replica_count: int, location_ids: list[int] | None,
                                 at: datetime | None = None) -> dict:
    """The per-replica volumes a deployment would create: every ordinal gets one of each size.
    `hourly_cost` is a Decimal (six places) for the deployment's estimate to add to its own."""
    book = PriceBook.load(hardware_type_ids=set(), volumes=True)
    price = book.volume_quote(location_ids=location_ids, at=at or timezone.now())
    gib = sum(sizes_gib) * replica_count
    return {"volumes": len(sizes_gib) * replica_count, "gib": gib, "price_per_gib_month": f"{price:.4f}",
            "hourly_cost": quantize_money(Decimal(price) * gib / HOURS_PER_MONTH)}
