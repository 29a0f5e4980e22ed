"""The event feed: one row per thing that happened to a deployment, written in the same
transaction as the change (the SSE feed and `GET /deployments/{id}/events?after=` read it).
Ids follow commit order (a trigger renumbers them at commit, migration 0005), so "after id N"
is a complete cursor. Payloads never carry secrets."""

from __future__ import annotations

from django.db import transaction

from cloud.deployments import feeds
from cloud.deployments.models import Event


def event_record(*, tenant=None, tenant_id=None, deployment=None, deployment_id=None, type: str,  # noqa: A002
                 payload: dict | None = None) -> Event:
    """The returned row's id is provisional until the transaction commits (renumbered then)."""
    if tenant is not None:
        tenant_id = tenant.pk
    if deployment is not None:
        deployment_id = deployment.pk
    event = Event.objects.create(tenant_id=tenant_id, deployment_id=deployment_id, type=type, payload=payload or {})
    transaction.on_commit(lambda: feeds.events_publish(tenant_id=tenant_id))
    return event


def actor_label(actor) -> str | None:
    """Who did it, as the tenant's members may read it: a username, or None for a service
    account or a task."""
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None
    return actor.get_username()
