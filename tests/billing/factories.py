"""Helpers for billing tests: balances as ledger entries, and incarnations that ran when a test
says they did (a controlled clock: every service here takes `now=`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from billing.selectors import tenant_balance
from billing.services import ledger_credit, meter_open
from cloud.deployments.models import Deployment, Replica
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
