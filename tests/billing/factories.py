"""Helpers for billing tests: balances as ledger entries, and incarnations that ran when a test
says they did (a controlled clock: every service here takes `now=`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.apps import apps
from django.utils import timezone

from billing.selectors import tenant_balance
from billing.services import ledger_credit, meter_open, meter_volume_close, meter_volume_open
from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services.events import event_record
from nodes.models import Node


def set_balance(tenant, amount) -> None:
    """Moves the tenant's balance to `amount` with one ledger entry (a credit, or a staff
    correction), as an operator would."""
    delta = Decimal(amount) - tenant_balance(tenant=tenant)
    if delta > 0:
        ledger_credit(tenant=tenant, amount=delta, reason="test: top up", actor_name="tests")
    elif delta < 0:
        ledger_credit(tenant=tenant, amount=-delta, kind="charge", reason="test: correction", actor_name="tests")


def run_on(replica: Replica, *, node: Node, started_at: datetime, heartbeat: datetime | None = None) -> Replica:
    """The replica's VM started on `node` at `started_at` and runs (its meter opens then, as the
    agent's `booting` report would open it); the node was last heard from at `heartbeat`."""
    replica.node, replica.state, replica.started_at = node, Replica.State.RUNNING, started_at
    replica.booted_at = started_at
    replica.host_port, replica.placed_at = 30000 + replica.ordinal, started_at
    replica.save()
    Node.objects.filter(pk=node.pk).update(last_heartbeat=heartbeat or started_at)
    Deployment.objects.filter(pk=replica.deployment_id).update(status=Deployment.Status.RUNNING)
    meter_open(replica=replica)
    return replica


def stop_at(replica: Replica, *, at: datetime, state: str = Replica.State.STOPPED) -> Replica:
    """The replica left `running` at `at` (its node reported it stopped, or failed)."""
    replica.state, replica.stopped_at, replica.ended_at, replica.vm_gone = state, at, at, True
    replica.save()
    return replica


def heartbeat(node: Node, at: datetime) -> None:
    Node.objects.filter(pk=node.pk).update(last_heartbeat=at)


def volume_for(tenant, *, location, created_at: datetime, size_gib: int = 100, name: str = "data"):
    """A volume of `tenant` made at `created_at`, with its meter opened as the volumes app opens
    it. Made through the app registry: billing (and its tests) never import the volumes app,
    which stands above billing."""
    Volume = apps.get_model("volumes", "Volume")
    volume = Volume.objects.create(tenant=tenant, name=name, size_gib=size_gib, location=location)
    Volume.objects.filter(pk=volume.pk).update(created_at=created_at)  # auto_now_add ignores a value
    volume.refresh_from_db()
    meter_volume_open(volume)
    return volume


def volume_delete(volume, *, at: datetime):
    """The volume was deleted at `at`, as the volumes app deletes one (state, then the meter)."""
    volume.state, volume.deleted_at = "deleted", at
    volume.save(update_fields=["state", "deleted_at"])
    return meter_volume_close(volume, at)


class RecordingKeeper:
    """A `billing.link.VolumeKeeper` for tests, doing what the volumes app's does (mark the
    volume deleted, end its meter; record tenant-wide events in the real feed) and recording
    each call. `fail` holds volume ids whose deletion raises, as a keeper that cannot reach the
    volume's row would."""

    def __init__(self):
        self.deleted: list[tuple] = []
        self.fail: set = set()
        self.without_meter: list[dict] = []

    def volumes_without_meter(self):
        return list(self.without_meter)

    def volume_delete_unpaid(self, *, volume_id, reason: str) -> None:
        if volume_id in self.fail:
            raise RuntimeError(f"volume {volume_id}: not reachable")
        self.deleted.append((volume_id, reason))
        volume = apps.get_model("volumes", "Volume").objects.get(pk=volume_id)
        volume_delete(volume, at=timezone.now())

    def volumes_event(self, *, tenant_id: int, type: str, payload: dict) -> None:  # noqa: A002
        event_record(tenant_id=tenant_id, type=type, payload=payload)
