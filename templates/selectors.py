"""Reads of the template catalog, always for one tenant: the global templates plus its own."""

from __future__ import annotations

import re

from django.db.models import Q, QuerySet

from cloud.exceptions import NotFound
from templates.models import Template


_REF_RE = re.compile(r"^(?:[0-9]{1,18}|[a-z0-9][a-z0-9-]{0,49})$")


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
    if not _REF_RE.match(ref):
        # Not an id or a slug (NUL bytes, slashes, 300 characters): nothing could match, and
        # PostgreSQL would refuse some of these outright.
        raise NotFound(f"No template '{ref[:60]}'.")
    visible = templates_for(tenant=tenant)
    if ref.isdigit():
        template = visible.filter(pk=int(ref)).first()
    else:
        # Private first: NULLs sort last in PostgreSQL's ascending order.
        template = visible.filter(slug=ref).order_by("tenant_id").first()
    if template is None:
        raise NotFound(f"No template '{ref}'.")
    return template
