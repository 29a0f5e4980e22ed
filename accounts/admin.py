from django.contrib import admin

from accounts.models import Membership, ServiceAccount, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "personal", "max_gpus", "max_deployments", "balance", "spend_limit", "created_at"]
    list_filter = ["personal"]
    search_fields = ["slug", "name", "memberships__user__email"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "user__username", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    list_display = ["application", "tenant", "scopes", "created_at"]
    search_fields = ["application__name", "application__client_id", "tenant__slug"]
    autocomplete_fields = ["tenant"]
    # The client secret lives hashed in DOT's Application; nothing here can show it.
    readonly_fields = ["application"]
