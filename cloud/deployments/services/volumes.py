"""Deployments and their volumes: the `volumes.link.DeploymentSide` the volumes app calls
(registered in DeploymentsConfig.ready()), and what placement asks about a replica's volumes.

A volume that a replica mounts read-write is held by at most one VM: an incarnation holds it
from its placement until its node says the VM is gone. So with such a volume an ordinal never
surges: its next incarnation waits for the last one's VM to end (services/rolling.py hands the
volume over ordinal by ordinal)."""

from __future__ import annotations

from django.db.models import Q

from cloud.deployments.models import Replica
from cloud.deployments.services.events import event_record
from volumes import selectors as volume_selectors


def _holding_q() -> Q:
    return Q(node__isnull=False, vm_gone=False)


def volume_holders(*, volume_ids, exclude_pk=None, writers_only: bool = False) -> dict[str, Replica]:
    """{volume id: an incarnation whose VM (placed, not yet gone) mounts it (read-write, with
    `writers_only`)}."""
    held: dict[str, Replica] = {}
    for volume_id, deployment_id, ordinal in volume_selectors.volume_users(volume_ids=volume_ids,
                                                                           writers_only=writers_only):
        replicas = Replica.objects.filter(_holding_q(), deployment_id=deployment_id)
        if ordinal is not None:
            replicas = replicas.filter(ordinal=ordinal)
        if exclude_pk is not None:
            replicas = replicas.exclude(pk=exclude_pk)
        holder = replicas.order_by("generation").first()
        if holder is not None:
            held.setdefault(volume_id, holder)
    return held


class VolumeSide:
    def volumes_held(self, *, volume_ids: list) -> set:
        return set(volume_holders(volume_ids=volume_ids))

    def event_record(self, *, tenant_id: int, deployment_id=None, type: str, payload: dict) -> None:  # noqa: A002
        event_record(tenant_id=tenant_id, deployment_id=deployment_id, type=type, payload=payload)
