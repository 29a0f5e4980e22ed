"""What metering needs from the deployments app without importing it (imports run one way:
the deployments app imports billing). The deployments app registers its `ReplicaSource` in
`AppConfig.ready()`, as it registers the agent consumer's sink with `nodes.link`.

Everything else billing reads about a replica it reaches through its own foreign keys
(`Meter.replica`, `UsageRecord.replica`): the source answers only the one question that starts
from the replicas' side.
"""

from __future__ import annotations

from typing import Protocol


class ReplicaSource(Protocol):
    def running_without_meter(self):
        """Incarnations whose VM started (`booting` or later), have not ended and have no meter
        yet: an iterable of dicts with `replica_id`, `deployment_id`, `tenant_id`, `booted_at`.
        (The deployments app opens a meter when a replica's VM starts; this is the net for any
        path that sets `booted_at` without one.)"""


_source: ReplicaSource | None = None


def register_source(source: ReplicaSource) -> None:
    global _source
    _source = source


def source() -> ReplicaSource | None:
    return _source
