"""Waking the scheduler: whatever makes a replica placeable (a new incarnation, units freed, a
node back online) asks for a pass once its transaction commits. Its own module so that the
scheduler and the modules it calls (status, agents, fleet) can all ask without importing one
another."""

from __future__ import annotations

import logging

from django.db import transaction

log = logging.getLogger(__name__)


def scheduler_kick() -> None:
    """Ask a worker to place pending replicas once this transaction commits. A broker that is
    away costs only latency: the periodic sweep places them anyway."""

    def send() -> None:
        from cloud.celery import app

        try:
            app.send_task("deployments.schedule_pending", ignore_result=True)
        except Exception:  # noqa: BLE001
            log.warning("could not queue a scheduling pass; the sweep will place the replicas", exc_info=True)

    transaction.on_commit(send)
