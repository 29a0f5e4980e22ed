"""What the volumes app needs of the deployments app without importing it (imports run one way:
deployments → volumes). The deployments app registers its `DeploymentSide` in
`AppConfig.ready()`, as it registers the agent consumer's sink with `nodes.link`.

A volume reaches the deployments it is attached to through its own foreign keys
(`VolumeAttachment.deployment`, `Volume.owner_deployment`); the side answers only what starts
from the replicas' side (does a VM still hold the volume) and writes the event feed, which is
the deployments app's table.
"""

from __future__ import annotations

from typing import Protocol


class DeploymentSide(Protocol):
    def volumes_held(self, *, volume_ids: list) -> set:
        """Of these volumes, the ids of those a VM still holds: an incarnation of a deployment
        that has the volume (attached, or its own per-replica volume) whose node has not yet
        said its VM is gone."""

    def event_record(self, *, tenant_id: int, deployment_id=None, type: str, payload: dict) -> None:  # noqa: A002
        """One row of the tenant's event feed, in the caller's transaction."""


_side: DeploymentSide | None = None


def register_side(side: DeploymentSide) -> None:
    global _side
    _side = side


def side() -> DeploymentSide:
    if _side is None:  # pragma: no cover - a wiring bug, not a runtime condition
        raise RuntimeError("no volumes DeploymentSide registered (is cloud.deployments installed?)")
    return _side
