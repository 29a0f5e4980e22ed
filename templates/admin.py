from django.contrib import admin

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


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "visibility", "image", "traffic_port", "min_gpus", "max_gpus", "updated_at"]
    list_filter = [VisibilityFilter]  # not by tenant: thousands of tenants make a useless sidebar; search instead
    search_fields = ["slug", "name", "image", "tenant__slug"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["created_at", "updated_at"]
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
