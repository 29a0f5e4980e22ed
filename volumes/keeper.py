"""What billing needs of volumes (billing.link.VolumeKeeper), registered at app ready: billing
sits below volumes and never imports it."""

from __future__ import annotations

from django.db.models import F

from volumes import link, services
from volumes.models import Volume


class VolumeKeeper:
    def volumes_without_meter(self):
        # Only a volume made before metering knew volumes lacks one: every create opens its
        # meter in its own transaction.
        return list(Volume.objects.filter(meter__isnull=True)
                    .values("tenant_id", "created_at", "deleted_at", volume_id=F("pk")))

    def volume_delete_unpaid(self, *, volume_id, reason: str) -> None:
        volume = Volume.objects.filter(pk=volume_id).first()
        if volume is not None:
            services.volume_delete(volume=volume, actor=None, reason=reason, detach=True)

    def volumes_event(self, *, tenant_id: int, type: str, payload: dict) -> None:  # noqa: A002
        link.side().event_record(tenant_id=tenant_id, type=type, payload=payload)
