"""Per-second metering. The metering task and statements arrive with the billing issue; the
ledger's shape is fixed now because deployments already show `total_cost` from it."""

from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="usage_records")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="usage_records")
    # PROTECT: what was metered outlives every delete path of the replica it was metered on.
    replica = models.ForeignKey("deployments.Replica", on_delete=models.PROTECT, related_name="usage_records")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    gpus = models.PositiveSmallIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    amount = models.DecimalField(max_digits=14, decimal_places=6)

    class Meta:
        ordering = ["period_start"]
        constraints = [
            # Closing an interval twice (a retried task, a restarted worker) is a no-op.
            models.UniqueConstraint(fields=["replica", "period_start"], name="usage_unique_replica_period"),
            models.CheckConstraint(condition=models.Q(period_end__gt=models.F("period_start")), name="usage_positive_period"),
        ]
        indexes = [models.Index(fields=["tenant", "period_start"], name="usage_tenant_period_idx")]
