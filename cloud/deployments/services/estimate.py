"""`POST /deployments/estimate`: what a create body would cost and whether there is room for it
right now, without creating anything. The body is resolved exactly as create resolves it
(`create.spec_resolve`), so the estimate and the create answer cannot disagree."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.money import hourly_cost, money_str
from billing.prices import PriceBook
from billing.selectors import spend_this_month_for, tenant_balance
from cloud.deployments.services import quotas
from cloud.deployments.services.create import Resolved, spec_resolve
from cloud.deployments.services.placement import liveness_window
from nodes.models import CpuSlot, Gpu, Node


def _free_units(model) -> Coalesce:
    counted = (model.objects.filter(node_id=OuterRef("pk"), replica__isnull=True).order_by()
               .values("node_id").annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _room(resolved: Resolved, *, now: datetime) -> dict[tuple[int, str], list[int]]:
    """{(location id, slug): [replicas that fit on each node with room]} over the nodes the
    scheduler would consider now (online, heard from within the liveness window)."""
    hardware = resolved.hardware
    units = 1 if hardware.cpu_only else resolved.gpus
    nodes = Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat__gte=now - liveness_window(),
                                hardware_type=hardware)
    if resolved.locations:
        nodes = nodes.filter(location__in=resolved.locations)
    if resolved.node is not None:
        nodes = nodes.filter(pk=resolved.node.pk)
    room: dict[tuple[int, str], list[int]] = defaultdict(list)
    for location_id, slug, free in (nodes.annotate(free=_free_units(CpuSlot if hardware.cpu_only else Gpu))
                                    .filter(free__gte=max(units, 1)).order_by("location_id")
                                    .values_list("location_id", "location__slug", "free")):
        room[(location_id, slug)].append(free // max(units, 1))
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
    # Create compares the balance with this hour plus everything already pending or running.
    committed = quotas.committed_hourly_cost(tenant=tenant, now=now)
    whole = committed + hourly
    return {
        "hardware_id": hardware.pk, "hardware": hardware.slug, "gpus_per_container": resolved.gpus,
        "replica_count": replicas, "location_ids": [loc.pk for loc in resolved.locations],
        "price_per_gpu_hour": f"{resolved.price_per_gpu_hour:.4f}", "hourly_cost": money_str(hourly),
        "duration_hours": duration, "cost_for_duration": money_str(hourly * duration) if duration else None,
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
