"""`POST /deployments/estimate`: what a create body would cost and whether there is room for it
right now, without creating anything. The body is resolved exactly as create resolves it
(`create.spec_resolve`), so the estimate and the create answer cannot disagree."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.estimate import per_replica_volumes_estimate
from billing.money import hourly_cost, money_str
from billing.prices import PriceBook
from billing.selectors import spend_this_month_for, tenant_balance
from cloud.deployments.services import quotas
from cloud.deployments.services.create import Resolved, spec_resolve
from nodes.selectors import room_by_location


def _room(resolved: Resolved, *, now: datetime) -> dict[tuple[int, str], list[int]]:
    """{(location id, slug): [replicas that fit on each node with room]} over the nodes the
    scheduler would consider now (online, heard from within the liveness window)."""
    hardware = resolved.hardware
    units = max(1 if hardware.cpu_only else resolved.gpus, 1)
    room: dict[tuple[int, str], list[int]] = defaultdict(list)
    for location_id, slug, free in room_by_location(
            hardware=hardware, units=units, location_ids=[loc.pk for loc in resolved.locations],
            node_id=resolved.node.pk if resolved.node is not None else None, now=now):
        room[(location_id, slug)].append(free // units)
    return room


def deployment_estimate(*, tenant, spec: dict, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    resolved = spec_resolve(tenant=tenant, spec=spec, need_image=False)
    hardware, replicas = resolved.hardware, resolved.replica_count
    book = PriceBook.load(hardware_type_ids=[hardware.pk])
    locations = []
    for (location_id, slug), fits in sorted(_room(resolved, now=now).items(), key=lambda item: item[0][1]):
        price = book.at(hardware_type_id=hardware.pk, location_id=location_id, at=now)
        locations.append({
            "location_id": location_id, "location": slug, "nodes_with_room": len(fits),
            "replicas_placeable_now": sum(fits), "price_per_gpu_hour": f"{price:.4f}",
            "hourly_cost": money_str(hourly_cost(price_per_gpu_hour=price, gpus_per_container=resolved.gpus,
                                                 replica_count=replicas)),
        })
    placeable = sum(loc["replicas_placeable_now"] for loc in locations)
    duration = spec.get("duration_hours")
    balance = tenant_balance(tenant=tenant)
    spent = spend_this_month_for(tenant=tenant, now=now)
    hourly = resolved.hourly_cost
    # A per-replica volume template makes one volume per ordinal, billed from its first placement
    # per provisioned GiB, beside the replicas' hourly_cost (which create returns).
    template = getattr(spec.get("volumes"), "template", None)
    volumes = None
    if template is not None:
        volumes = per_replica_volumes_estimate(sizes_gib=[template["size_gib"]], replica_count=replicas,
                                               location_ids=[loc.pk for loc in resolved.locations] or None, at=now)
        volumes["hourly_cost"] = money_str(volumes["hourly_cost"])
    # Create compares the balance with this hour plus everything already pending or running.
    committed = quotas.committed_hourly_cost(tenant=tenant, now=now)
    whole = committed + hourly
    return {
        "hardware_id": hardware.pk, "hardware": hardware.slug, "gpus_per_container": resolved.gpus,
        "replica_count": replicas, "location_ids": [loc.pk for loc in resolved.locations],
        "price_per_gpu_hour": f"{resolved.price_per_gpu_hour:.4f}", "hourly_cost": money_str(hourly),
        "volumes": volumes, "duration_hours": duration, "cost_for_duration": money_str(hourly * duration) if duration else None,
        "capacity": {"available_now": placeable >= replicas, "replicas_placeable_now": placeable,
                     "locations": locations},
        "funds": {
            "balance": money_str(balance), "committed_hourly_cost": money_str(committed),
            "covers_one_hour": hourly <= 0 or balance >= whole,
            "hours_covered": str((max(balance, Decimal("0")) / whole).quantize(Decimal("0.01"))) if hourly > 0 else None,
            "spend_limit": money_str(tenant.spend_limit) if tenant.spend_limit is not None else None,
            "spend_this_month": money_str(spent),
            "spend_limit_reached": tenant.spend_limit is not None and spent >= tenant.spend_limit,
        },
    }
