"""Reads of the template catalog, always for one tenant: the global templates plus its own."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from cloud.exceptions import NotFound
from templates.models import Template


def templates_for(*, tenant) -> QuerySet[Template]:
    """Global templates and `tenant`'s private ones; never another tenant's."""
    return Template.objects.filter(Q(tenant__isnull=True) | Q(tenant=tenant)).order_by("slug", "id")


def template_get(*, tenant, ref) -> Template:
    """A template by id (digits) or slug, as the deployments API's `template_id` names it.

    A tenant's private template shadows a global one of the same slug (an operator may add a
    global template after a customer already has a private one by that name: the customer's
    scripts keep meaning what they meant). Another tenant's template is NotFound, like a
    template that does not exist.
    """
    ref = str(ref).strip()
    visible = templates_for(tenant=tenant)
    if ref.isdigit():
        template = visible.filter(pk=int(ref)).first()
    else:
        # Private first: NULLs sort last in PostgreSQL's ascending order.
        template = visible.filter(slug=ref).order_by("tenant_id").first()
    if template is None:
        raise NotFound(f"No template '{ref}'.")
    return template
