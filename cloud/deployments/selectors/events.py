"""Tenant-scoped reads of the event feed: one deployment's, or the tenant's for its SSE stream."""

from __future__ import annotations


from django.db.models import Q, QuerySet

from cloud.deployments.models import Event

from cloud.deployments.selectors.deployments import Page, _visible_pk


def _events(queryset: QuerySet[Event], *, after: int | None, before: int | None, limit: int) -> Page:
    queryset = queryset.select_related("deployment").only(
        "id", "type", "payload", "ts", "deployment_id", "tenant_id", "deployment__name")
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    if after is not None or before is None:
        events = list(queryset.filter(id__gt=after or 0).order_by("id")[:limit + 1])
        return Page(events[:limit], len(events) > limit)
    events = list(queryset.order_by("-id")[:limit + 1])
    more = len(events) > limit
    events = events[:limit]
    events.reverse()
    return Page(events, more)


def events_for(*, tenant, deployment_id, after: int | None = None, before: int | None = None,
               limit: int = 100) -> Page:
    """The deployment's events oldest first, by id (commit order): after a cursor, or the
    `limit` right before one."""
    pk = _visible_pk(tenant=tenant, deployment_id=deployment_id)
    return _events(Event.objects.filter(tenant=tenant, deployment_id=pk), after=after, before=before, limit=limit)


def events_for_tenant(*, tenant, after: int = 0, deployment_id=None, types: tuple[str, ...] = (),
                      limit: int = 500) -> Page:
    """The tenant's events after a cursor, for its SSE feed: of one deployment (a visible one:
    NotFound otherwise), of some types (`replica.*` for a prefix), or all."""
    queryset = Event.objects.filter(tenant=tenant)
    if deployment_id is not None:
        queryset = queryset.filter(deployment_id=_visible_pk(tenant=tenant, deployment_id=deployment_id))
    if types:
        kinds = Q()
        for kind in types:
            kinds |= Q(type__startswith=kind[:-1]) if kind.endswith("*") else Q(type=kind)
        queryset = queryset.filter(kinds)
    return _events(queryset, after=after, before=None, limit=limit)
