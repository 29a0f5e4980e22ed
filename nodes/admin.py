"""The fleet in the admin: what an operator needs to find a node, see its GPUs and who holds
them, and act on it (cordon, drain, uncordon, revoke, join token) through nodes/services.py.
Inventory and credentials come from the agent and the join flow, so they are read-only here;
nothing in the admin can show a node credential, only whether one is set."""

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from cloud.exceptions import ApplicationError
from nodes import services
from nodes.models import CpuSlot, Gpu, HardwareType, Location, Node, NodeEvent


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ["id", "slug", "name", "country"]
    search_fields = ["slug", "name", "country"]
    ordering = ["id"]


@admin.register(HardwareType)
class HardwareTypeAdmin(admin.ModelAdmin):
    list_display = ["id", "slug", "name", "gpu_model", "gpus_per_node", "allowed_gpu_counts", "interconnect",
                    "price_per_gpu_hour", "cpu_only"]
    list_filter = ["cpu_only", "interconnect", "gpu_model"]
    search_fields = ["slug", "name", "gpu_model"]
    ordering = ["id"]

    def get_readonly_fields(self, request, obj=None):
        # Set once, as the list price a new type starts at; from then on prices change in the
        # billing price book (Billing > Prices), from a time of the operator's choosing, and
        # this column follows it. Editing it here would re-price seconds not yet metered.
        return ["price_per_gpu_hour"] if obj is not None else []


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    can_delete = False
    fields = ["index", "model", "memory_mib", "pci_bdf", "numa_node", "nvlink_domain", "iommu_group", "uuid", "health",
              "health_reason", "replica"]
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


class CpuSlotInline(admin.TabularInline):
    model = CpuSlot
    extra = 0
    can_delete = False
    fields = ["index", "replica"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class NodeEventInline(admin.TabularInline):
    """The node's refused reports (a hello naming another node's GPU, ...), newest first."""

    model = NodeEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "message"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    max_num = 0

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(NodeEvent)
class NodeEventAdmin(admin.ModelAdmin):
    """Written only by nodes/services.py; an operator reads them here (or on the node's page)."""

    list_display = ["created_at", "node", "kind", "message"]
    list_filter = ["kind"]
    search_fields = ["node__hostname", "message"]
    list_select_related = ["node"]
    readonly_fields = ["node", "kind", "message", "detail", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class NodeChangeForm(forms.ModelForm):
    """A node's page: the public address changes only through `services.node_set_public_address`
    (which checks and normalises it). No model field is in this form, so the form itself writes
    nothing; this unbound field carries the operator's new value to the service."""

    new_public_address = forms.CharField(
        required=False, label="Public address",
        help_text="The IP address customers' endpoints use (http://<address>:<host port>); empty for none.")

    class Meta:
        model = Node
        fields: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["new_public_address"].initial = self.instance.public_address or ""

    def clean_new_public_address(self):
        try:
            return services.public_address_clean(self.cleaned_data["new_public_address"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.detail) from None


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    """Nodes are created here (or with `manage.py create_node`) and then only changed through
    nodes/services.py: cordon, drain, uncordon, revoke, a new join token, a new public address
    (NodeChangeForm). No status field is editable, and what the agent reports (inventory,
    versions, `simulated`) is read-only."""

    list_display = ["hostname", "simulated", "status", "location", "hardware_type", "gpus_free", "gpu_passthrough",
                    "last_heartbeat", "agent_version", "accelerator"]
    list_filter = ["status", "location", "hardware_type", "simulated", "gpu_passthrough"]
    search_fields = ["hostname", "public_address"]
    list_select_related = ["location", "hardware_type"]
    readonly_fields = ["status", "status_reason", "credential", "replicas", "last_heartbeat", "agent_version", "protocol_version",
                       "simulated", "cpus", "memory_mib", "disk_gib", "accelerator", "gpu_passthrough",
                       "gpu_passthrough_reason", "preflight", "inventory", "drain_deadline", "created_at"]
    exclude = ["credential_hash", "credential_issued_at"]
    inlines = [GpuInline, CpuSlotInline, NodeEventInline]
    actions = ["cordon", "drain", "uncordon", "revoke_credential", "issue_join_token"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _gpus_free=Count("gpus", filter=Q(gpus__replica__isnull=True, gpus__health=Gpu.Health.OK), distinct=True),
            _gpus_total=Count("gpus", distinct=True),
        )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:  # adding: only what create_node asks for
            return ["status", "created_at"]
        return [*self.readonly_fields, "hostname", "location", "hardware_type"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["hostname", "hardware_type", "location", "public_address"]
        return super().get_fields(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None:
            kwargs["form"] = NodeChangeForm
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            # Only the address is editable here, and only through its service.
            services.node_set_public_address(node_id=obj.pk, public_address=form.cleaned_data["new_public_address"])
            return
        try:
            made = services.node_create(hostname=obj.hostname, hardware_type=obj.hardware_type, location=obj.location,
                                        public_address=obj.public_address)
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        obj.pk = made.node.pk
        self._show_token(request, made)

    def _show_token(self, request, made) -> None:
        self.message_user(request, "Join token (shown once, valid 1 h): " + json.dumps(made.as_json()), messages.WARNING)

    @admin.display(description="GPUs free", ordering="_gpus_free")
    def gpus_free(self, obj: Node) -> str:
        return f"{obj._gpus_free}/{obj._gpus_total}"

    @admin.display(description="preflight")
    def preflight(self, obj: Node) -> str:
        """The agent's preflight, one line per check: what failed and what to change."""
        checks = (obj.inventory or {}).get("preflight", {}).get("checks", [])
        if not checks:
            return "not reported (an agent from before preflight, or the node has not joined)"
        rows = (("ok" if c.get("ok") else ("FAIL" if c.get("required") else "warn"), c.get("name"), c.get("detail"),
                 f" — fix: {c['fix']}" if c.get("fix") else "") for c in checks)
        return format_html("<ul>{}</ul>", format_html_join("", "<li><b>{}</b> {}: {}{}</li>", rows))

    @admin.display(description="replicas")
    def replicas(self, obj: Node) -> str:
        # A link, not an inline: the replicas belong to the deployments app, which nodes never imports.
        url = reverse("admin:deployments_replica_changelist") + f"?node__id__exact={obj.pk}"
        return format_html('<a href="{}">replicas on this node</a>', url)

    @admin.display(description="credential")
    def credential(self, obj: Node) -> str:
        # Only a hash is stored, and even that stays out of sight: it would help an offline guess.
        return "issued" if obj.credential_hash else "none (the node has not joined, or it was revoked)"

    def _each(self, request, queryset, verb, done: str) -> None:
        for node in queryset:
            try:
                verb(node_id=node.pk)
            except ApplicationError as exc:
                self.message_user(request, f"{node.hostname}: {exc.detail}", messages.ERROR)
            else:
                self.message_user(request, f"{node.hostname}: {done}", messages.SUCCESS)

    @admin.action(description="Cordon: place nothing new here")
    def cordon(self, request, queryset):
        self._each(request, queryset, services.node_cordon, "cordoned")

    @admin.action(description="Drain: move replicas elsewhere, then stop what is left")
    def drain(self, request, queryset):
        self._each(request, queryset, services.node_drain, "draining")

    @admin.action(description="Uncordon: place replicas here again")
    def uncordon(self, request, queryset):
        self._each(request, queryset, services.node_uncordon, "online")

    @admin.action(description="Revoke the node's credential (its agent is cut off)")
    def revoke_credential(self, request, queryset):
        self._each(request, queryset, services.node_revoke_credential, "credential revoked")

    @admin.action(description="Issue a new join token")
    def issue_join_token(self, request, queryset):
        for node in queryset:
            self._show_token(request, services.join_token_reissue(node=node))


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["__str__", "model", "pci_bdf", "numa_node", "nvlink_domain", "iommu_group", "health", "replica",
                    "simulated"]
    list_filter = [FreeGpuFilter, "health", "model", "node__simulated", "node__location"]
    search_fields = ["uuid", "pci_bdf", "node__hostname"]
    list_select_related = ["node", "replica__deployment"]
    # Health is the agent's word (a GPU comes back when its node says it is usable again).
    readonly_fields = ["node", "index", "uuid", "pci_bdf", "model", "memory_mib", "numa_node", "nvlink_domain",
                       "iommu_group", "health", "health_reason", "replica"]

    def has_add_permission(self, request):
        return False  # GPUs come from the agent's inventory, never typed in

    @admin.display(boolean=True, description="simulated", ordering="node__simulated")
    def simulated(self, obj: Gpu) -> bool:
        return obj.node.simulated
