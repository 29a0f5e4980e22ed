"""Prices, metering, the ledger and what acts on it (DESIGN sections 4 and 8).

- `Price`: the price book. One row per (hardware type, location or every location, effective
  from); a change is a new row, so nothing already metered is ever re-priced.
- `VolumePrice`: the volumes' price book: USD per provisioned GiB-month in a location (or every
  location), from `effective_from`; the same rules as `Price`.
- `Meter`: one per replica incarnation that ever ran, or per volume: how far it has been
  metered and the running sums behind its records (the metering task's cursor and the
  `total_cost` cache).
- `UsageRecord`: one closed interval of one incarnation or one volume at one price, on one UTC day.
- `UsageDaily`: the records summed per deployment (or volume), day and location (usage API,
  spend this month, the operators' report), written in the same transaction as the records.
- `LedgerEntry`: credits, charges and refunds; a tenant's balance is the sum of its ledger.
- `FundsNotice`: a tenant's low-balance warning or out-of-funds grace period, while it lasts.
- `MeterRun`: one row per metering pass (what it did, how long it took).

Every row that records money is PROTECTed from every delete path of the rows it points at.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from billing.money import MONEY_DIGITS, MONEY_PLACES_N

# What a meter, a usage record or a daily sum is of: exactly one of a replica incarnation
# (with its deployment) or a volume. The database holds it, so no code path can write a row
# that is both or neither, and every sum over these tables is a sum of one kind of thing each.
_REPLICA_XOR_VOLUME = (Q(replica__isnull=False, volume__isnull=True) | Q(replica__isnull=True, volume__isnull=False))


class PriceChange(models.Model):
    """What every price row keeps beside its amount: from when (never in the past, so nothing
    metered is re-priced), why, and who set it."""

    effective_from = models.DateTimeField(help_text="UTC, whole seconds; never in the past when added")
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True


class Price(PriceChange):
    """Price per unit-hour (a GPU, or one replica slot on CPU-only hardware) of a hardware
    type, in one location or (location empty) every location without a price of its own,
    from `effective_from` until the next row for the same (hardware type, location)."""

    hardware_type = models.ForeignKey("nodes.HardwareType", on_delete=models.PROTECT, related_name="prices")
    location = models.ForeignKey("nodes.Location", null=True, blank=True, on_delete=models.PROTECT, related_name="prices",
                                 help_text="empty: every location without a price of its own")
    price_per_unit_hour = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(0)],
                                              help_text="USD per GPU-hour (per replica-hour on CPU-only hardware)")

    class Meta:
        ordering = ["hardware_type_id", "location_id", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["hardware_type", "location", "effective_from"], nulls_distinct=False,
                                    name="price_unique_hardware_location_from"),
        ]

    def __str__(self) -> str:
        where = self.location.slug if self.location_id else "every location"
        return f"{self.hardware_type.slug} in {where}: {self.price_per_unit_hour}/h from {self.effective_from:%Y-%m-%d %H:%M:%SZ}"


class VolumePrice(PriceChange):
    """Price per provisioned GiB-month of a volume, in one location or (location empty) every
    location without a price of its own, from `effective_from` until the next row for the same
    location. Metering charges it per second: per GiB-hour is this / 730 (hours in a month),
    kept exact until the six-place amount. With no row at all, VOLUME_PRICE_PER_GIB_MONTH
    applies (the list price, as a hardware type's catalog price is)."""

    location = models.ForeignKey("nodes.Location", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="volume_prices", help_text="empty: every location without a price of its own")
    price_per_gib_month = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(0)],
                                              help_text="USD per provisioned GiB per month (730 hours)")

    class Meta:
        ordering = ["location_id", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["location", "effective_from"], nulls_distinct=False,
                                    name="volume_price_unique_location_from"),
        ]

    def __str__(self) -> str:
        where = self.location.slug if self.location_id else "every location"
        return f"volumes in {where}: {self.price_per_gib_month}/GiB-month from {self.effective_from:%Y-%m-%d %H:%M:%SZ}"


class Meter(models.Model):
    """An incarnation's meter: opened when its VM process starts (`booting`), closed once
    metered up to its end. Or a volume's: opened when the volume is created, ended (`ends_at`)
    when it is deleted, closed once metered up to there. `metered_from` is where its first record starts (the billed
    interval the API shows begins there) and never moves. Rows are claimed FOR UPDATE SKIP LOCKED by the metering task, so two workers never
    meter the same incarnation at once; `metered_to` is where its next record starts.

    `unit_price_seconds` is the exact sum of price x units x seconds so far, so each record's
    amount is the rounded running total minus what was charged before: the records of an
    incarnation add up to its exact cost rounded once, never a sum of per-minute roundings."""

    replica = models.OneToOneField("deployments.Replica", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="meter")
    volume = models.OneToOneField("volumes.Volume", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="meter")
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="+")
    deployment = models.ForeignKey("deployments.Deployment", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="meters")
    # A volume's end (its deletion), set by `meter_volume_close`; an incarnation's end is its
    # replica's `stopped_at`, which the agents report.
    ends_at = models.DateTimeField(null=True, blank=True)
    metered_from = models.DateTimeField()
    metered_to = models.DateTimeField()
    unit_price_seconds = models.DecimalField(max_digits=28, decimal_places=4, default=0)
    seconds = models.BigIntegerField(default=0)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES_N, default=0)
    closed = models.BooleanField(default=False)
    opened_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["replica"], condition=Q(closed=False), name="meter_open_idx"),
            models.Index(fields=["tenant"], condition=Q(closed=False), name="meter_open_tenant_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=_REPLICA_XOR_VOLUME, name="meter_replica_xor_volume"),
            models.CheckConstraint(condition=Q(replica__isnull=True) | Q(deployment__isnull=False),
                                   name="meter_replica_has_deployment"),
            models.CheckConstraint(condition=Q(ends_at__isnull=True) | Q(volume__isnull=False),
                                   name="meter_ends_at_is_a_volumes"),
        ]


class UsageRecord(models.Model):
    """A replica's record: `units` GPUs (or one slot) at `price_per_unit_hour`. A volume's:
    `units` provisioned GiB at `price_per_gib_month` (no deployment, hardware or GPUs)."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="usage_records")
    deployment = models.ForeignKey("deployments.Deployment", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="usage_records")
    # PROTECT: what was metered outlives every delete path of the replica it was metered on.
    replica = models.ForeignKey("deployments.Replica", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="usage_records")
    volume = models.ForeignKey("volumes.Volume", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="usage_records")
    hardware_type = models.ForeignKey("nodes.HardwareType", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="+")
    location = models.ForeignKey("nodes.Location", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    seconds = models.PositiveIntegerField()
    gpus = models.PositiveSmallIntegerField(help_text="GPUs of the replica (0 on CPU-only hardware)")
    units = models.PositiveIntegerField(help_text="what is billed: the GPUs, or one slot; a volume's GiB")
    price_per_unit_hour = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    price_per_gib_month = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=6)

    class Meta:
        ordering = ["period_start", "id"]
        constraints = [
            # Closing an interval twice (a retried task, a restarted worker) is refused.
            models.UniqueConstraint(fields=["replica", "period_start"], name="usage_unique_replica_period"),
            models.UniqueConstraint(fields=["volume", "period_start"], name="usage_unique_volume_period"),
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")), name="usage_positive_period"),
            models.CheckConstraint(condition=_REPLICA_XOR_VOLUME, name="usage_replica_xor_volume"),
            # Each kind carries its own price and what it belongs to, never the other's.
            models.CheckConstraint(
                condition=(Q(replica__isnull=False, deployment__isnull=False, hardware_type__isnull=False,
                             price_per_unit_hour__isnull=False, price_per_gib_month__isnull=True)
                           | Q(volume__isnull=False, deployment__isnull=True, hardware_type__isnull=True, gpus=0,
                               price_per_unit_hour__isnull=True, price_per_gib_month__isnull=False)),
                name="usage_kind_fields"),
        ]
        indexes = [models.Index(fields=["tenant", "period_start"], name="usage_tenant_period_idx")]


class UsageDaily(models.Model):
    """The records of one deployment (or one volume) on one UTC day in one location, summed.
    Records are split at midnight UTC, so every record is in exactly one row here and the sums
    are exact."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="+")
    deployment = models.ForeignKey("deployments.Deployment", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    volume = models.ForeignKey("volumes.Volume", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    hardware_type = models.ForeignKey("nodes.HardwareType", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="+")
    location = models.ForeignKey("nodes.Location", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES_N, default=0)
    seconds = models.BigIntegerField(default=0)
    gpu_seconds = models.BigIntegerField(default=0)
    gib_seconds = models.BigIntegerField(default=0, help_text="a volume's provisioned GiB x seconds")
    records = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["day", "deployment_id"]
        constraints = [
            # One of deployment and volume is null on every row, and NULLs are equal here: one
            # row per deployment or volume, day and location.
            models.UniqueConstraint(fields=["deployment", "volume", "day", "location"], nulls_distinct=False,
                                    name="usage_daily_unique_owner_day_location"),
            models.CheckConstraint(
                condition=(Q(deployment__isnull=False, volume__isnull=True, hardware_type__isnull=False)
                           | Q(deployment__isnull=True, volume__isnull=False, hardware_type__isnull=True)),
                name="usage_daily_deployment_xor_volume"),
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="usage_daily_tenant_day_idx"),
                   models.Index(fields=["day"], name="usage_daily_day_idx")]


class LedgerEntry(models.Model):
    """Append-only. `amount` is signed (credits and refunds add, charges subtract); `seq` counts
    a tenant's entries from 1 and `balance_after` is the sum of its entries up to this one,
    both written once under the tenant's row lock, so the balance is one index lookup and the
    unique (tenant, seq) refuses two writers branching from the same balance."""

    class Kind(models.TextChoices):
        CREDIT = "credit"
        CHARGE = "charge"
        REFUND = "refund"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="ledger_entries")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=6, choices=Kind.choices)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES_N)
    balance_after = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES_N)
    # A metered charge points at its record; a credit, refund or correction says who and why.
    usage_record = models.OneToOneField(UsageRecord, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="ledger_entry")
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Who, as text that survives the user's deletion: a username, `cli:<login>`, `system:metering`.
    actor_name = models.CharField(max_length=150)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tenant_id", "seq"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "seq"], name="ledger_unique_tenant_seq"),
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], condition=Q(idempotency_key__isnull=False),
                                    name="ledger_unique_tenant_key"),
            models.CheckConstraint(
                condition=(Q(kind="charge", amount__lte=0) | Q(kind__in=("credit", "refund"), amount__gt=0)),
                name="ledger_sign_matches_kind"),
            models.CheckConstraint(condition=Q(usage_record__isnull=True) | Q(kind="charge"),
                                   name="ledger_usage_is_a_charge"),
        ]
        indexes = [models.Index(fields=["created_at"], name="ledger_created_idx")]

    def __str__(self) -> str:
        return f"{self.tenant_id}#{self.seq} {self.kind} {self.amount}"


class FundsNotice(models.Model):
    """A tenant-wide notice while it lasts: `low_balance` (the balance runs out within
    BALANCE_WARNING_HOURS at the current rate), `exhausted` (zero balance or the monthly spend
    limit reached: live deployments stop at `stop_at` unless funds come back first), or
    `volumes` (funds exhausted while the tenant has volumes: they are deleted at `stop_at`,
    VOLUME_GRACE_DAYS later, unless funds come back first)."""

    class Kind(models.TextChoices):
        LOW_BALANCE = "low_balance"
        EXHAUSTED = "exhausted"
        VOLUMES = "volumes"

    class Outcome(models.TextChoices):
        STOPPED = "stopped"
        RESOLVED = "resolved"
        DELETED = "deleted"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="funds_notices")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    cause = models.CharField(max_length=12, blank=True, help_text="balance or spend_limit")
    message = models.CharField(max_length=500)
    opened_at = models.DateTimeField()
    stop_at = models.DateTimeField(null=True, blank=True)
    emailed_to = models.JSONField(default=list, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind"], condition=Q(closed_at__isnull=True),
                                    name="funds_notice_one_open_per_kind"),
        ]


class MeterRun(models.Model):
    """One metering pass, written in its own transaction: a pass killed half-way leaves no row
    (and nothing else). Operators read the lag here; tests wait on it."""

    now = models.DateTimeField(help_text="the pass's clock: intervals were closed up to here")
    meters = models.PositiveIntegerField(default=0)
    records = models.PositiveIntegerField(default=0)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES_N, default=0)
    duration_ms = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
