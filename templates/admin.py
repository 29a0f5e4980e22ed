"""The template catalog in the admin. Every write goes through templates/services.py: a
tenant's template keeps the customers' rules (at most MAX_PRIVATE_TEMPLATES, a slug never a
global's), a global one the operators' (`template_global_save`). A refusal is a form error or a
message, never a 500."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from cloud.admin import ServiceDeleteMixin, service_dry_run
from templates import services
from templates.models import Template


class VisibilityFilter(admin.SimpleListFilter):
    title = "visibility"
    parameter_name = "visibility"

    def lookups(self, request, model_admin):
        return [("global", "Global"), ("private", "Tenant-private")]

    def queryset(self, request, queryset):
        if self.value() == "global":
            return queryset.filter(tenant__isnull=True)
        if self.value() == "private":
            return queryset.filter(tenant__isnull=False)
        return queryset


def _write(*, original: Template | None, tenant, data: dict) -> Template:
    """The service call that makes or changes a template from the admin's form."""
    if original is None:
        if tenant is None:
            return services.template_global_save(data=data)
        return services.template_create(tenant=tenant, data=data)
    if original.is_global:
        return services.template_global_save(template=original, data=data)
    return services.template_update(template=original, data=data)


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = ["tenant", *services.EDITABLE_FIELDS]

    def clean(self):
        data = super().clean()
        if not self.errors:
            original = Template.objects.get(pk=self.instance.pk) if self.instance.pk else None
            tenant = original.tenant if original is not None else data.get("tenant")
            service_dry_run(self, lambda: _write(original=original, tenant=tenant, data=data))
        return data


@admin.register(Template)
class TemplateAdmin(ServiceDeleteMixin, admin.ModelAdmin):
    list_display = ["slug", "name", "visibility", "image", "traffic_port", "min_gpus", "max_gpus", "updated_at"]
    list_filter = [VisibilityFilter]  # not by tenant: thousands of tenants make a useless sidebar; search instead
    search_fields = ["slug", "name", "image", "tenant__slug"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    form = TemplateForm
    fieldsets = [
        (None, {"fields": ["tenant", "slug", "name", "description"],
                "description": "Leave tenant empty for a global template every customer sees."}),
        ("Container", {"fields": ["image", "default_env", "entrypoint", "args", "traffic_port", "health_check_path"]}),
        ("GPUs", {"fields": ["min_gpus", "max_gpus"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="visibility")
    def visibility(self, obj: Template) -> str:
        return "global" if obj.is_global else f"private ({obj.tenant.slug})"

    def get_readonly_fields(self, request, obj=None):
        # Which tenant a template belongs to is chosen once: moving one would change what a
        # `template_id` means to two tenants at once.
        return ["created_at", "updated_at"] + (["tenant"] if obj is not None else [])

    def save_model(self, request, obj, form, change):
        original = Template.objects.get(pk=obj.pk) if change else None
        tenant = original.tenant if original is not None else form.cleaned_data.get("tenant")
        obj.pk = _write(original=original, tenant=tenant, data=form.cleaned_data).pk

    def delete_through_service(self, request, obj) -> None:
        if obj.is_global:
            services.template_global_delete(template=obj)
        else:
            services.template_delete(template=obj)
