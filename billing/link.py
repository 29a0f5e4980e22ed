"""What billing needs from the apps above it without importing them (imports run one way: the
deployments and volumes apps import billing). Each registers its side in `AppConfig.ready()`,
as the deployments app registers the agent consumer's sink with `nodes.link`.

- `ReplicaSource` (the deployments app): incarnations that run without a meter.
- `VolumeKeeper` (the volumes app): volumes without a meter, the event feed for billing's
  volume notices, and deleting a volume whose grace period ran out (`billing.grace`).

Everything else billing reads about a replica or a volume it reaches through its own foreign
keys (`Meter.replica`, `Meter.volume`, `UsageRecord.volume`): these answer only the questions
that start from the other side.
"""

from __future__ import annotations

from typing import Protocol


class ReplicaSource(Protocol):
    def running_without_meter(self):
        """Incarnations whose VM started (`booting` or later), have not ended and have no meter
        yet: an iterable of dicts with `replica_id`, `deployment_id`, `tenant_id`, `booted_at`.
        (The deployments app opens a meter when a replica's VM starts; this is the net for any
        path that sets `booted_at` without one.)"""


class VolumeKeeper(Protocol):
    def volumes_without_meter(self):
        """Volumes that have no meter yet: an iterable of dicts with `volume_id`, `tenant_id`,
        `created_at` and `deleted_at` (None while it lives). (The volumes app calls
        `meter_volume_open` when it creates a volume; this is the net for any path that does
        not, and billing meters such a volume from its creation to its deletion.)"""

    def volume_delete_unpaid(self, *, volume_id, reason: str) -> None:
        """Delete the volume: its tenant's funds stayed exhausted through the grace period.
        `volumes.services.volume_delete(volume, actor=None, reason=reason)`, including for a
        volume attached to a (stopped) deployment: the data goes, as the customer was told.
        Safe to call again for a volume already deleting or deleted (a retried pass). Raising
        leaves the tenant's notice open, so the next pass tries again."""

    def volumes_event(self, *, tenant_id: int, type: str, payload: dict) -> None:  # noqa: A002
        """Record a tenant-wide event (no deployment) in the feed, in the caller's transaction:
        `volume.funds_exhausted` (deletion scheduled) and `volume.funds_restored` (cancelled)."""


_source: ReplicaSource | None = None
_volume_keeper: VolumeKeeper | None = None


def register_source(source: ReplicaSource) -> None:
    global _source
    _source = source


def source() -> ReplicaSource | None:
    return _source


def register_volume_keeper(keeper: VolumeKeeper | None) -> None:
    """The volumes app registers its keeper at ready (None unregisters: tests that swap it)."""
    global _volume_keeper
    _volume_keeper = keeper


def volume_keeper() -> VolumeKeeper | None:
    return _volume_keeper
