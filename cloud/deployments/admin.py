"""Operators' view of deployments and of the gateways the plane pushes routes to. Secrets are
never shown: the encrypted columns are not fields of any form here, only `secret_env_keys`
(names) is displayed, an endpoint key shows its prefix, and a gateway's token can be replaced but
not read. Deleting a deployment goes through the service (stop, then hide) so metered usage is
never cascaded away."""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.utils import timezone

from billing.money import money_str
from billing.selectors import deployment_cost_annotations
from cloud.admin import ReadOnlyAdminMixin, service_dry_run
from cloud.deployments import services
from cloud.deployments.models import Deployment, EndpointKey, Event, Gateway, GatewayPort, IdempotencyKey, LogLine, Replica
from cloud.exceptions import ApplicationError


class ReplicaInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Replica
    extra = 0
    fields = ["ordinal", "generation", "desired", "state", "reason", "node", "vm_address", "host_port", "exit_code",
              "started_at", "stopped_at", "ended_at"]
    readonly_fields = fields
    show_change_link = True


class EndpointKeyInline(ReadOnlyAdminMixin, admin.TabularInline):
    """Keys are made and revoked by the tenant (API); here only which exist, by prefix."""

    model = EndpointKey
    extra = 0
    fields = ["name", "prefix", "created_at", "created_by", "revoked_at"]
    readonly_fields = fields
    ordering = ["-created_at"]


class GatewayPortInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The gateway ports its TCP ports hold (allocated and freed by the API's writes only)."""

    model = GatewayPort
    extra = 0
    fields = ["name", "port", "created_at"]
    readonly_fields = fields


class UuidSearchMixin:
    """`id` is a UUID: an exact match when the term is one, never a 500 when it is not."""

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        try:
            term_id = uuid.UUID(search_term.strip())
        except ValueError:
            return queryset, may_have_duplicates
        return queryset | self.model.objects.filter(Q(pk=term_id)), may_have_duplicates


@admin.register(Deployment)
class DeploymentAdmin(UuidSearchMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "status", "hardware_type", "gpus_per_container", "replica_count", "cost",
                    "created_at", "expires_at", "deleted_at"]
    list_filter = ["status", "hardware_type", "locations", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "tenant__slug", "image"]
    list_select_related = ["tenant", "hardware_type"]
    raw_id_fields = ["tenant", "template", "node"]
    filter_horizontal = ["locations"]
    readonly_fields = ["id", "secret_env_keys", "registry_username", "price_per_gpu_hour", "cost", "created_at",
                       "updated_at", "started_at", "stopped_at", "deleted_at"]
    fields = ["id", "tenant", "name", "status", "status_reason", "template", "image", "registry_username", "env",
              "secret_env_keys", "entrypoint", "args", "traffic_port", "endpoint_label", "endpoint_access",
              "request_timeout_s", "max_request_body_mb", "expose", "allow_public_tcp", "gpus_per_container", "hardware_type", "locations",
              "node", "replica_count", "duration_hours", "expires_at", "price_per_gpu_hour", "cost", "created_at",
              "updated_at", "started_at", "stopped_at", "deleted_at"]
    inlines = [ReplicaInline, EndpointKeyInline, GatewayPortInline]
    actions = ["start_selected", "stop_selected", "restart_selected", "delete_selected_softly"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**deployment_cost_annotations(now=timezone.now()))

    @admin.display(description="total cost (USD)")
    def cost(self, obj: Deployment) -> str:
        # Its usage records plus what runs since the last metering pass, as the API shows it.
        return money_str(obj.metered_cost + obj.accruing_cost)

    def get_readonly_fields(self, request, obj=None):
        # Every change goes through the services (the actions here, the API): no status,
        # replica count or hardware typed into a form, bypassing quotas, funds and the nodes.
        return self.fields

    def has_add_permission(self, request):
        return False  # deployments are created through the API, which checks quotas and funds

    def has_delete_permission(self, request, obj=None):
        return False  # a hard delete would cascade away metered usage; use the action instead

    def _each(self, request, queryset, service, verb: str) -> None:
        done = 0
        for deployment in queryset.select_related("tenant"):
            try:
                service(tenant=deployment.tenant, actor=request.user, deployment_id=deployment.pk)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{deployment.name}: {exc.detail}", level=messages.WARNING)
        self.message_user(request, f"{verb} {done} deployment(s).")

    @admin.action(description="Start selected deployments")
    def start_selected(self, request, queryset):
        self._each(request, queryset, services.deployment_start, "Started")

    @admin.action(description="Restart selected deployments (new incarnations)")
    def restart_selected(self, request, queryset):
        self._each(request, queryset, services.deployment_restart, "Restarted")

    @admin.action(description="Stop selected deployments")
    def stop_selected(self, request, queryset):
        self._each(request, queryset, services.deployment_stop, "Stopped")

    @admin.action(description="Delete selected deployments (stop, then hide; usage kept)")
    def delete_selected_softly(self, request, queryset):
        self._each(request, queryset.filter(deleted_at__isnull=True), services.deployment_delete, "Deleted")


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Incarnations as history and as the nodes reported them: read-only (a replica moves
    through its deployment's actions and its node's reports, never a form)."""

    list_display = ["__str__", "uid", "desired", "state", "reason", "node", "host_port", "exit_code", "started_at",
                    "ended_at"]
    list_filter = ["state", "desired", "node"]
    search_fields = ["deployment__name", "deployment__tenant__slug", "node__hostname"]
    list_select_related = ["deployment", "node"]

    def get_search_results(self, request, queryset, search_term):
        queryset, dupes = super().get_search_results(request, queryset, search_term)
        try:
            return queryset | self.model.objects.filter(uid=uuid.UUID(search_term.strip())), dupes
        except ValueError:
            return queryset, dupes


@admin.register(LogLine)
class LogLineAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["ts", "deployment", "replica", "seq", "stream", "message"]
    list_filter = ["stream"]
    search_fields = ["message", "deployment__name"]
    list_select_related = ["deployment", "replica", "replica__deployment"]
    show_full_result_count = False  # the table is large; counting it on every page is not worth it


@admin.register(Event)
class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["ts", "type", "deployment", "tenant"]
    list_filter = ["type"]
    search_fields = ["type", "deployment__name", "tenant__slug"]
    list_select_related = ["deployment", "tenant"]
    show_full_result_count = False


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["key", "tenant", "status_code", "deployment", "created_at"]
    search_fields = ["key", "tenant__slug"]
    list_select_related = ["tenant", "deployment"]
    # `fingerprint` is a keyed hash of the body (which held secrets): of no use to an operator.
    exclude = ["fingerprint"]


class GatewayForm(forms.ModelForm):
    token = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The token the gateway was started with (--token-file). Write-only: leave empty to keep the "
                  "current one.")

    class Meta:
        model = Gateway
        fields = ["name", "control_url"]

    def clean(self):
        data = super().clean()
        if self.instance.pk is None and not data.get("token"):
            self.add_error("token", "A new gateway needs its token.")
        if not self.errors:
            service_dry_run(self, lambda: self.register())
        return data

    def register(self):
        token = self.cleaned_data.get("token") or (self.instance.get_token() if self.instance.pk else "")
        name = self.instance.name if self.instance.pk else self.cleaned_data["name"]
        return services.gateway_register(name=name, control_url=self.cleaned_data["control_url"], token=token)


@admin.register(Gateway)
class GatewayAdmin(admin.ModelAdmin):
    """Gateways are registered with `manage.py gateway_register` or here, through the same
    service; the push's columns are what it found last."""

    form = GatewayForm
    list_display = ["name", "control_url", "last_push_at", "last_success_at", "last_digest", "last_error"]
    search_fields = ["name", "control_url"]
    readonly_fields = ["created_at", "last_push_at", "last_success_at", "last_digest", "last_error"]

    def get_readonly_fields(self, request, obj=None):
        # The name is what gateway_register finds a gateway by: renaming would register another.
        return ["name", *self.readonly_fields] if obj is not None else self.readonly_fields

    def get_fields(self, request, obj=None):
        return ["name", "control_url", "token", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        gateway, _ = form.register()
        obj.pk = gateway.pk
