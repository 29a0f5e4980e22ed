"""Writes to the template catalog. Customers manage only their own private templates; global
ones come from `load_catalog` or the admin."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from cloud.exceptions import ApplicationError, Conflict, InvalidInput, QuotaExceeded
from cloud.upsert import row_upsert
from templates.models import Template

# A template is a few hundred bytes, but an unbounded list is a cheap way to bloat every
# catalog page a tenant loads; operators can make more room by raising this.
MAX_PRIVATE_TEMPLATES = 200

EDITABLE_FIELDS = (
    "slug", "name", "description", "image", "default_env", "entrypoint", "args",
    "traffic_port", "min_gpus", "max_gpus", "health_check_path",
)


class TemplateReadOnly(ApplicationError):
    """A global template is visible to every tenant, so refusing with 403 confirms nothing
    that GET does not already show."""

    status = 403
    title = "Forbidden"
    code = "template_read_only"


def _check_slug_free(*, tenant, slug: str, exclude_pk=None) -> None:
    clash = Template.objects.filter(slug=slug, tenant=tenant)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise Conflict(f"You already have a template with slug '{slug}'.",
                       errors=[{"field": "slug", "message": "already in use", "code": "unique"}])
    if Template.objects.filter(slug=slug, tenant__isnull=True).exists():
        # Allowed by the database (private shadows global), refused here so that a customer's
        # `template_id: "ollama"` never silently changes meaning under their colleagues.
        raise Conflict(f"'{slug}' is the slug of a global template; choose another.",
                       errors=[{"field": "slug", "message": "taken by a global template", "code": "unique"}])


def _check_gpu_range(template: Template) -> None:
    if template.min_gpus > template.max_gpus:
        raise InvalidInput("min_gpus", "min_gpus must not exceed max_gpus.")


def _apply_and_save(template: Template, data: dict) -> Template:
    for field, value in data.items():
        if field in EDITABLE_FIELDS:
            setattr(template, field, value)
    _check_gpu_range(template)
    return _save(template)


def _save(template: Template) -> Template:
    try:
        with transaction.atomic():
            template.save()
    except IntegrityError as exc:  # two concurrent creates of the same slug
        raise Conflict(f"A template with slug '{template.slug}' already exists.") from exc
    return template


@transaction.atomic
def template_create(*, tenant, actor=None, data: dict) -> Template:
    if Template.objects.filter(tenant=tenant).count() >= MAX_PRIVATE_TEMPLATES:
        raise QuotaExceeded(f"A tenant may keep at most {MAX_PRIVATE_TEMPLATES} private templates; delete one first.")
    template = Template(tenant=tenant, **{k: v for k, v in data.items() if k in EDITABLE_FIELDS})
    _check_slug_free(tenant=tenant, slug=template.slug)
    _check_gpu_range(template)
    return _save(template)


def template_check_editable(*, template: Template) -> None:
    if template.is_global:
        raise TemplateReadOnly("Global templates are managed by operators.")


@transaction.atomic
def template_update(*, template: Template, actor=None, data: dict) -> Template:
    template_check_editable(template=template)
    if "slug" in data and data["slug"] != template.slug:
        _check_slug_free(tenant=template.tenant, slug=data["slug"], exclude_pk=template.pk)
    return _apply_and_save(template, data)


@transaction.atomic
def template_delete(*, template: Template, actor=None) -> None:
    template_check_editable(template=template)
    # Deployments keep their own copy of image, env and ports; their FK is SET_NULL.
    template.delete()


@transaction.atomic
def template_global_save(*, template: Template | None = None, data: dict) -> Template:
    """An operator's new or changed global template (the admin). Customers never make or change
    one (`template_check_editable`); `load_catalog` brings the catalog's own ones to its spec."""
    if template is not None and not template.is_global:
        raise InvalidInput("tenant", "This template is a tenant's; it stays theirs.")
    return _apply_and_save(template or Template(tenant=None), data)


@transaction.atomic
def template_global_delete(*, template: Template) -> None:
    """An operator withdraws a global template; deployments made from it keep their own copy."""
    if not template.is_global:
        raise InvalidInput("tenant", "This template is a tenant's: delete it with template_delete.")
    template.delete()


def template_upsert_global(*, slug: str, defaults: dict) -> tuple[Template, str]:
    """For `load_catalog`: create or bring a global template to `defaults`. Returns the
    template and what happened: "created", "updated" or "unchanged"."""
    return row_upsert(Template.objects.filter(tenant__isnull=True, slug=slug).first(),
                      make=lambda **fields: Template(tenant=None, slug=slug, **fields), defaults=defaults)
