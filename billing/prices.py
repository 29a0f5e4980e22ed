"""The price book: what a unit-hour of a hardware type costs in a location at an instant.

A price for (hardware type, location) wins over the every-location price of the hardware type
from its `effective_from` on; the every-location price applies elsewhere; a hardware type
with no entry at all is priced at its catalog list price (`HardwareType.price_per_gpu_hour`),
so a type just added by `load_catalog` or the admin is billable at once. Entries are never
edited: a change is a new row from a time not in the past, so nothing already metered is
re-priced, and a running interval is split at the change.

Volumes have a price book of their own with the same rules (`VolumePrice`: USD per provisioned
GiB-month, per location or every location); with no entry at all, VOLUME_PRICE_PER_GIB_MONTH.
A GiB-hour is the monthly price / HOURS_PER_MONTH (730), and metering keeps that division for
the one rounding of the amount (`billing.money.cost_of`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import Price, VolumePrice
from cloud.exceptions import InvalidInput
from nodes.selectors import hardware_types_list
from nodes.services import hardware_list_prices_follow


def floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def ceil_second(moment: datetime) -> datetime:
    return moment if moment.microsecond == 0 else moment.replace(microsecond=0) + timedelta(seconds=1)


@dataclass
class PriceBook:
    """Every entry of some hardware types, in memory: the metering task prices thousands of
    intervals with one query. `changes` are the instants inside an interval where its price
    may change, so the interval can be split there."""

    list_prices: dict[int, Decimal]
    entries: dict[tuple[int, int | None], list[tuple[datetime, Decimal]]] = field(default_factory=dict)
    # Volumes' entries per location (None: every location), loaded when asked for.
    volume_entries: dict[int | None, list[tuple[datetime, Decimal]]] = field(default_factory=dict)

    @classmethod
    def load(cls, *, hardware_type_ids=None, volumes: bool = False) -> PriceBook:
        types = hardware_types_list()
        prices = Price.objects.all()
        if hardware_type_ids is not None:
            types = types.filter(pk__in=hardware_type_ids)
            prices = prices.filter(hardware_type_id__in=hardware_type_ids)
        # (An empty `hardware_type_ids` runs no query: Django answers an empty IN itself.)
        book = cls(list_prices=dict(types.values_list("pk", "price_per_gpu_hour")))
        for hw, loc, since, price in prices.order_by("effective_from").values_list(
                "hardware_type_id", "location_id", "effective_from", "price_per_unit_hour"):
            book.entries.setdefault((hw, loc), []).append((since, price))
        if volumes:
            for loc, since, price in VolumePrice.objects.order_by("effective_from").values_list(
                    "location_id", "effective_from", "price_per_gib_month"):
                book.volume_entries.setdefault(loc, []).append((since, price))
        return book

    @staticmethod
    def _latest(rows: list[tuple[datetime, Decimal]] | None, at: datetime) -> Decimal | None:
        if not rows:
            return None
        i = bisect.bisect_right([since for since, _ in rows], at)
        return rows[i - 1][1] if i else None

    def at(self, *, hardware_type_id: int, location_id: int | None, at: datetime) -> Decimal:
        if location_id is not None:
            own = self._latest(self.entries.get((hardware_type_id, location_id)), at)
            if own is not None:
                return own
        shared = self._latest(self.entries.get((hardware_type_id, None)), at)
        if shared is not None:
            return shared
        return self.list_prices[hardware_type_id]

    def changes(self, *, hardware_type_id: int, location_id: int | None, start: datetime, end: datetime) -> list[datetime]:
        keys = [(hardware_type_id, None)] + ([(hardware_type_id, location_id)] if location_id is not None else [])
        return sorted({since for key in keys for since, _ in self.entries.get(key, ()) if start < since < end})

    def quote(self, *, hardware_type_id: int, location_ids: list[int] | None, at: datetime) -> Decimal:
        """The most a unit-hour may cost wherever the replica may be placed: the deployment's
        locations, or every location. A quote never under-estimates what the funds check needs."""
        if location_ids:
            candidates = location_ids
        else:
            candidates = [loc for hw, loc in self.entries if hw == hardware_type_id and loc is not None]
        prices = [self.at(hardware_type_id=hardware_type_id, location_id=loc, at=at) for loc in candidates]
        if not location_ids:
            prices.append(self.at(hardware_type_id=hardware_type_id, location_id=None, at=at))
        return max(prices)


    # -- volumes: USD per provisioned GiB-month ---------------------------------------------------
    def volume_at(self, *, location_id: int | None, at: datetime) -> Decimal:
        if location_id is not None:
            own = self._latest(self.volume_entries.get(location_id), at)
            if own is not None:
                return own
        shared = self._latest(self.volume_entries.get(None), at)
        return shared if shared is not None else volume_list_price()

    def volume_changes(self, *, location_id: int | None, start: datetime, end: datetime) -> list[datetime]:
        keys = [None] + ([location_id] if location_id is not None else [])
        return sorted({since for key in keys for since, _ in self.volume_entries.get(key, ()) if start < since < end})

    def volume_quote(self, *, location_ids: list[int] | None, at: datetime) -> Decimal:
        """The most a GiB-month may cost in `location_ids` (anywhere when empty), as `quote`."""
        candidates = list(location_ids) if location_ids else [loc for loc in self.volume_entries if loc is not None]
        prices = [self.volume_at(location_id=loc, at=at) for loc in candidates]
        if not location_ids:
            prices.append(self.volume_at(location_id=None, at=at))
        return max(prices)


def volume_list_price() -> Decimal:
    """The price per GiB-month where the volumes' price book has no entry (settings)."""
    return Decimal(str(settings.VOLUME_PRICE_PER_GIB_MONTH))


def volume_price_quote(*, location_ids: list[int] | None = None, at: datetime | None = None) -> Decimal:
    """What a GiB-month of a volume in `location_ids` (any when empty) is quoted now."""
    return PriceBook.load(hardware_type_ids=set(), volumes=True).volume_quote(location_ids=location_ids,
                                                                             at=at or timezone.now())


def price_quote(*, hardware_type, location_ids: list[int] | None = None,
                at: datetime | None = None) -> Decimal:
    """What a deployment of `hardware_type` in `location_ids` (any when empty) is quoted per
    unit-hour now: its `price_per_gpu_hour` at creation and the funds checks use this."""
    book = PriceBook.load(hardware_type_ids=[hardware_type.pk])
    return book.quote(hardware_type_id=hardware_type.pk, location_ids=location_ids, at=at or timezone.now())


def unit_price_expression(*, hardware_type_ref: str, location_ref: str, at: datetime):
    """An SQL expression for the price per unit-hour at `at`, for querysets that carry a hardware
    type id and a location id (the names of those columns, resolved against the outer row):
    the same rule as `PriceBook.at`, for annotations that must stay one query."""
    own_or_shared = (
        Price.objects.filter(hardware_type_id=OuterRef(hardware_type_ref), effective_from__lte=at)
        .filter(Q(location_id=OuterRef(location_ref)) | Q(location__isnull=True))
        # A location's own price first, then the newest.
        .order_by(F("location_id").asc(nulls_last=True), "-effective_from")
        .values("price_per_unit_hour")[:1]
    )
    list_price = hardware_types_list().filter(pk=OuterRef(hardware_type_ref)).values("price_per_gpu_hour")[:1]
    return Coalesce(Subquery(own_or_shared), Subquery(list_price))


def _price_checked(price: Decimal, field: str, *, effective_from: datetime | None,
                   now: datetime | None) -> tuple[datetime, datetime]:
    """(now, effective_from) in whole seconds for a new price, or InvalidInput: a price starts
    now or later (nothing metered is re-priced) and is zero or more."""
    now = floor_second(now or timezone.now())
    effective_from = ceil_second(effective_from or now)
    if effective_from < now:
        raise InvalidInput("effective_from", "A price change takes effect now or later, never in the past: "
                                             "what has been metered is never re-priced.", code="in_the_past")
    if price < 0:
        raise InvalidInput(field, "A price is zero or more.", code="min_value")
    return now, effective_from


@transaction.atomic
def price_set(*, hardware_type, location, price: Decimal,
              effective_from: datetime | None = None, actor=None, reason: str = "",
              now: datetime | None = None) -> Price:
    """Adds a price from `effective_from` (now when omitted; never in the past, so nothing
    metered or being metered is re-priced). The catalog's list price follows the
    every-location price once it is in effect (`list_prices_sync`)."""
    now, effective_from = _price_checked(price, "price_per_unit_hour", effective_from=effective_from, now=now)
    if Price.objects.filter(hardware_type=hardware_type, location=location, effective_from=effective_from).exists():
        raise InvalidInput("effective_from", "This hardware type already has a price from that instant there.",
                           code="unique")
    entry = Price.objects.create(hardware_type=hardware_type, location=location, price_per_unit_hour=price,
                                 effective_from=effective_from, reason=reason,
                                 created_by=actor if getattr(actor, "is_authenticated", False) else None)
    list_prices_sync(now=now)
    return entry


@transaction.atomic
def volume_price_set(*, location, price: Decimal, effective_from: datetime | None = None, actor=None,
                     reason: str = "", now: datetime | None = None) -> VolumePrice:
    """Adds a volume price per GiB-month in `location` (every location when None) from
    `effective_from` (now when omitted; never in the past), as `price_set` does for hardware."""
    now, effective_from = _price_checked(price, "price_per_gib_month", effective_from=effective_from, now=now)
    if VolumePrice.objects.filter(location=location, effective_from=effective_from).exists():
        raise InvalidInput("effective_from", "Volumes already have a price from that instant there.", code="unique")
    return VolumePrice.objects.create(location=location, price_per_gib_month=price, effective_from=effective_from,
                                      reason=reason,
                                      created_by=actor if getattr(actor, "is_authenticated", False) else None)


def list_prices_sync(*, now: datetime | None = None) -> int:
    """The catalog shows each hardware type's every-location price in effect now (GET
    /hardware): one UPDATE for the types whose price book moved on. Runs on every price change
    and every metering pass, so a change scheduled for later shows up within a minute."""
    now = now or timezone.now()
    current = (Price.objects.filter(hardware_type_id=OuterRef("pk"), location__isnull=True, effective_from__lte=now)
               .order_by("-effective_from").values("price_per_unit_hour")[:1])
    return hardware_list_prices_follow(Subquery(current))
