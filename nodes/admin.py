"""The fleet in the admin: what an operator needs to find a node, see its GPUs and who holds
them. Inventory (GPUs) and credentials come from the agent and the join flow, so they are
read-only here; nothing in the admin can show a node credential, only whether one is set."""

from django.contrib import admin
from django.db.models import Count, Q

from nodes.models import Gpu, HardwareType, Location, Node


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ["id", "slug", "name", "country"]
    search_fields = ["slug", "name", "country"]
    ordering = ["id"]


@admin.register(HardwareType)
class HardwareTypeAdmin(admin.ModelAdmin):
    list_display = ["id", "slug", "name", "gpu_model", "gpus_per_node", "allowed_gpu_counts", "price_per_gpu_hour", "cpu_only"]
    list_filter = ["cpu_only", "gpu_model"]
    search_fields = ["slug", "name", "gpu_model"]
    ordering = ["id"]


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    can_delete = False
    fields = ["index", "model", "memory_mib", "pci_bdf", "numa_node", "nvlink_domain", "iommu_group", "uuid", "replica"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


class FreeGpuFilter(admin.SimpleListFilter):
    title = "allocation"
    parameter_name = "allocation"

    def lookups(self, request, model_admin):
        return [("free", "Free"), ("allocated", "Allocated")]

    def queryset(self, request, queryset):
        if self.value() == "free":
            return queryset.filter(replica__isnull=True)
        if self.value() == "allocated":
            return queryset.filter(replica__isnull=False)
        return queryset


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["hostname", "simulated", "status", "location", "hardware_type", "gpus_free", "last_heartbeat", "agent_version"]
    list_filter = ["status", "location", "hardware_type", "simulated"]
    search_fields = ["hostname", "public_address"]
    list_select_related = ["location", "hardware_type"]
    readonly_fields = ["credential", "last_heartbeat", "agent_version", "simulated", "created_at"]
    exclude = ["credential_hash"]
    inlines = [GpuInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _gpus_free=Count("gpus", filter=Q(gpus__replica__isnull=True)), _gpus_total=Count("gpus"),
        )

    @admin.display(description="GPUs free", ordering="_gpus_free")
    def gpus_free(self, obj: Node) -> str:
        return f"{obj._gpus_free}/{obj._gpus_total}"

    @admin.display(description="credential")
    def credential(self, obj: Node) -> str:
        # Only a hash is stored, and even that stays out of sight: it would help an offline guess.
        return "issued" if obj.credential_hash else "none (the node has not joined)"


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["__str__", "model", "pci_bdf", "numa_node", "nvlink_domain", "iommu_group", "replica", "simulated"]
    list_filter = [FreeGpuFilter, "model", "node__simulated", "node__location"]
    search_fields = ["uuid", "pci_bdf", "node__hostname"]
    list_select_related = ["node", "replica__deployment"]
    readonly_fields = ["node", "index", "uuid", "pci_bdf", "model", "memory_mib", "numa_node", "nvlink_domain", "iommu_group", "replica"]

    def has_add_permission(self, request):
        return False  # GPUs come from the agent's inventory, never typed in

    @admin.display(boolean=True, description="simulated", ordering="node__simulated")
    def simulated(self, obj: Gpu) -> bool:
        return obj.node.simulated
