from django.contrib import admin

from billing.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The ledger is written only by the metering task: read-only here."""

    list_display = ["period_start", "period_end", "tenant", "deployment", "replica", "gpus", "price_per_gpu_hour", "amount"]
    list_filter = ["period_start"]
    search_fields = ["tenant__slug", "deployment__name"]
    list_select_related = ["tenant", "deployment", "replica", "replica__deployment"]
    date_hierarchy = "period_start"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
