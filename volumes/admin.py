"""Operators see volumes read-only; a delete goes through the same service as the API's."""

from django.contrib import admin, messages

from volumes import services
from volumes.models import Volume


@admin.register(Volume)
class VolumeAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "size_gib", "location", "node", "state", "created_at"]
    list_filter = ["state", "location"]
    search_fields = ["name", "tenant__slug", "id"]
    readonly_fields = [f.name for f in Volume._meta.fields]
    actions = ["erase"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # an erase is the `erase` action (the node must discard the blocks)

    @admin.action(description="Erase the selected volumes (refused while attached)")
    def erase(self, request, queryset):
        for volume in queryset:
            try:
                services.volume_delete(volume=volume, actor=request.user, reason="erased by an operator")
            except Exception as exc:  # noqa: BLE001 - one refused erase must not stop the others
                messages.error(request, f"{volume.name}: {exc}")
