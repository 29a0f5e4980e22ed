"""The event feed: one row per thing that happened to a deployment, in id order (the SSE
feed and `GET /deployments/{id}/events?after=` read it). Payloads never carry secrets."""

from __future__ import annotations

from cloud.deployments.models import Event


def event_record(*, tenant=None, tenant_id=None, deployment=None, type: str, payload: dict | None = None) -> Event:  # noqa: A002
    if tenant is not None:
        tenant_id = tenant.pk
    return Event.objects.create(tenant_id=tenant_id, deployment=deployment, type=type, payload=payload or {})


def actor_label(actor) -> str | None:
    """Who did it, as the tenant's members may read it: a username, or None for a service
    account or a task."""
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None
    return actor.get_username()
