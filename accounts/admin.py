from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import Membership, ServiceAccount, Tenant
from billing.selectors import balance_expression


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """The balance is the billing ledger's sum: shown here, changed only by adding a ledger
    entry (credit, refund, correction) with who and why. A tenant with metered usage or a
    ledger cannot be deleted (PROTECT)."""

    list_display = ["slug", "name", "personal", "max_gpus", "max_deployments", "balance", "spend_limit", "created_at"]
    list_filter = ["personal"]
    search_fields = ["slug", "name", "memberships__user__email"]
    readonly_fields = ["balance", "ledger"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_balance=balance_expression(tenant_ref="pk"))

    @admin.display(description="balance (USD)", ordering="_balance")
    def balance(self, obj: Tenant):
        return getattr(obj, "_balance", None) if obj.pk else None

    @admin.display(description="ledger")
    def ledger(self, obj: Tenant) -> str:
        if not obj.pk:
            return "-"
        entries = reverse("admin:billing_ledgerentry_changelist") + f"?tenant__id__exact={obj.pk}"
        add = reverse("admin:billing_ledgerentry_add") + f"?tenant={obj.pk}"
        return format_html('<a href="{}">ledger entries</a> · <a href="{}">add a credit or refund</a>', entries, add)


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
