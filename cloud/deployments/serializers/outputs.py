"""What the deployments API returns. Secrets never appear: secret env shows its names only,
the registry secret not at all, an endpoint key's secret only in the answer that made it (its
hash never), and a replica's VM address (internal) is never shown."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.money import money_str
from billing.selectors import billed_interval_of, deployment_cost_for
from billing.services import hourly_cost
from cloud.deployments import feeds
from cloud.deployments.labels import endpoint_host, expose_label
from cloud.deployments.models import Deployment, GatewayPort, LogLine, Replica
from cloud.deployments.routes import serving_replicas
from cloud.deployments.services.expose import TRAFFIC_PORT_NAME, tcp_url
from cloud.fields import EnvField
from protocol.vocabulary import ENDPOINT_ACCESSES, EXPOSE_HTTP, EXPOSE_PROTOCOLS, LIVE_STATUSES, PUBLIC


def endpoint_url(*, address: str | None, port: int | None) -> str | None:
    if not address or not port:
        return None
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}"


def gateway_url(label: str) -> str:
    port = settings.GANTRY_GATEWAY_HTTPS_PORT
    return f"https://{endpoint_host(label)}" + ("" if port == 443 else f":{port}")


class EndpointOutput(serializers.Serializer):
    """One name the gateway serves the deployment under: traffic_port's, and one per port of `expose`."""

    type = serializers.ChoiceField(choices=["https", "tcp"])
    name = serializers.CharField(help_text="Which of the deployment's ports: \"http\" for traffic_port, else the "
                                           "name in `expose`.")
    url = serializers.CharField(help_text="https://<endpoint_host> for traffic_port, https://<endpoint_label>-<name>."
                                          "<domain> for another HTTP port (with the gateway's port when it is not "
                                          "443), tcp://<the gateways' host>:<port> for a TCP port.")
    port = serializers.IntegerField(help_text="The gateway's port: its HTTPS port, or the TCP port it holds for this "
                                              "deployment's port (stable while the deployment exists).")
    internal_port = serializers.IntegerField(help_text="The container's port behind it.")
    access = serializers.ChoiceField(choices=list(ENDPOINT_ACCESSES),
                                     help_text="private: callers send an endpoint key in Gantry-Key. A TCP port is "
                                               "always public.")
    ready = serializers.BooleanField(help_text="A replica takes requests on it through the gateway now (running, "
                                               "its health check passing, and started with this port).")


class ExposeOutput(serializers.Serializer):
    name = serializers.CharField()
    port = serializers.IntegerField(help_text="The container's port.")
    protocol = serializers.ChoiceField(choices=list(EXPOSE_PROTOCOLS))


class WarningOutput(serializers.Serializer):
    code = serializers.ChoiceField(choices=["low_balance", "insufficient_funds"])
    message = serializers.CharField()
    stop_at = serializers.DateTimeField(allow_null=True, help_text="When the deployment stops unless funds come back.")


class DeploymentVolumeOutput(serializers.Serializer):
    volume_id = serializers.CharField(required=False, help_text="The attached volume (absent: a per-replica volume).")
    name = serializers.CharField(required=False)
    size_gib = serializers.IntegerField()
    mount_path = serializers.CharField()
    mode = serializers.ChoiceField(choices=["rw", "ro"])
    keep = serializers.BooleanField(required=False, help_text="Per-replica: kept when the deployment is deleted.")


class DeploymentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    endpoint_label = serializers.CharField(
        read_only=True, help_text="The DNS label the gateway will serve this deployment under: made at creation, never "
                                  "changed, never reused.")
    endpoint_host = serializers.SerializerMethodField(
        help_text="The host name the gateway will serve this deployment under: <endpoint_label>.<the operator's domain>.")
    status = serializers.ChoiceField(choices=Deployment.Status.choices)
    status_reason = serializers.CharField(help_text="Why the deployment is in this status, for a human.")
    template_id = serializers.SerializerMethodField(help_text="The template's slug, or null for a custom image.")
    image = serializers.CharField()
    gpus_per_container = serializers.IntegerField()
    hardware_id = serializers.IntegerField(source="hardware_type_id")
    location_ids = serializers.SerializerMethodField()
    node_id = serializers.IntegerField(allow_null=True, help_text="The node every replica is pinned to, if any.")
    replica_count = serializers.IntegerField()
    ready_replicas = serializers.SerializerMethodField()
    endpoints = serializers.SerializerMethodField()
    endpoint_access = serializers.ChoiceField(choices=list(ENDPOINT_ACCESSES), help_text=(
        "private: the gateway answers only requests carrying one of the deployment's endpoint keys in Gantry-Key; "
        "public: anyone with the URL."))
    request_timeout_s = serializers.IntegerField(help_text="Seconds a request through the gateway may take.")
    max_request_body_mb = serializers.IntegerField(help_text="Largest request body the gateway lets through (MiB).")
    expose = ExposeOutput(many=True, help_text="Ports beside traffic_port; `endpoints` lists where each is served.")
    allow_public_tcp = serializers.BooleanField(help_text="A private deployment may have TCP ports (which are public).")
    env = EnvField(help_text="Plain environment variables.")
    secret_env_keys = serializers.ListField(child=serializers.CharField(), help_text="Names of the secret variables; values are never returned.")
    entrypoint = serializers.ListField(child=serializers.CharField(allow_blank=True), allow_null=True)
    args = serializers.ListField(child=serializers.CharField(allow_blank=True), allow_null=True)
    traffic_port = serializers.IntegerField(allow_null=True)
    health_check_path = serializers.CharField(help_text="What the node's health check GETs on traffic_port; empty: a TCP connect.")
    duration_hours = serializers.IntegerField(allow_null=True)
    stop_grace_seconds = serializers.IntegerField(help_text="Seconds between ACPI power-off and the kill.")
    registry_username = serializers.SerializerMethodField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4, help_text="USD per GPU-hour (per replica-hour on CPU-only hardware) quoted at creation from the price "
                                                        "book; what is charged follows the price book.")
    estimated_hourly_cost = serializers.SerializerMethodField()
    total_cost = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField()
    volumes = serializers.SerializerMethodField(help_text="Its volumes: attached ones by id, and its per-replica one.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    stopped_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(DeploymentVolumeOutput(many=True))
    def get_volumes(self, obj: Deployment) -> list[dict]:
        # Annotated by selectors.deployments_for (one query for a whole page).
        shown = [dict(v) for v in getattr(obj, "volume_list", None) or []]
        template = getattr(obj, "volume_template_json", None)
        if template:
            shown.append({"size_gib": template["size_gib"], "mount_path": template["mount_path"], "mode": "rw",
                          "keep": template["keep"]})
        return shown

    @extend_schema_field(OpenApiTypes.STR)
    def get_endpoint_host(self, obj: Deployment) -> str:
        return endpoint_host(obj.endpoint_label)

    @extend_schema_field({"type": ["string", "null"]})
    def get_template_id(self, obj: Deployment):
        return obj.template.slug if obj.template_id else None

    @extend_schema_field({"type": "array", "items": {"type": "integer"}})
    def get_location_ids(self, obj: Deployment):
        ids = getattr(obj, "location_id_list", None)  # annotated by selectors.deployments_for
        return list(ids) if ids is not None else [loc.id for loc in obj.locations.order_by("id")]

    @extend_schema_field(OpenApiTypes.INT)
    def get_ready_replicas(self, obj: Deployment) -> int:
        running = getattr(obj, "running_count", None)  # annotated by selectors.deployments_for
        if running is None:
            running = obj.replicas.filter(state=Replica.State.RUNNING, host_port__isnull=False,
                                          node__isnull=False).count()
        return running

    @extend_schema_field(EndpointOutput(many=True))
    def get_endpoints(self, obj: Deployment) -> list[dict]:
        """Its gateway names: traffic_port's, then each port of `expose` in its order (the direct
        node address of each replica is `replicas[].endpoint`). `ready` is what routes.route_table
        decides: the selector's annotations, or these queries for a row without them."""
        serving = getattr(obj, "serving", None)  # annotated by selectors.deployments_for
        if serving is None and obj.traffic_port:
            serving = serving_replicas().filter(deployment=obj, host_port__isnull=False,
                                                node__public_address__isnull=False).exists()
        ports_served = getattr(obj, "serving_ports", None)  # ditto
        if ports_served is None and obj.expose:
            ports_served = [port for host_ports in serving_replicas().filter(
                deployment=obj, node__public_address__isnull=False).values_list("host_ports", flat=True)
                for port in host_ports]
        ports_served = set(ports_served or ())
        if hasattr(obj, "tcp_names"):  # ditto: the gateway ports its TCP ports hold, by name
            listen = dict(zip(obj.tcp_names or (), obj.tcp_ports or ()))
        else:
            listen = dict(GatewayPort.objects.filter(deployment=obj).values_list("name", "port")) if obj.expose else {}
        https_port = settings.GANTRY_GATEWAY_HTTPS_PORT
        endpoints = []
        if obj.traffic_port:
            endpoints.append({"type": "https", "name": TRAFFIC_PORT_NAME, "url": gateway_url(obj.endpoint_label),
                              "port": https_port, "internal_port": obj.traffic_port, "access": obj.endpoint_access,
                              "ready": bool(serving)})
        for entry in obj.expose:
            ready = str(entry["port"]) in ports_served
            if entry["protocol"] == EXPOSE_HTTP:
                endpoints.append({"type": "https", "name": entry["name"],
                                  "url": gateway_url(expose_label(obj.endpoint_label, entry["name"])),
                                  "port": https_port, "internal_port": entry["port"], "access": obj.endpoint_access,
                                  "ready": ready})
            elif entry["name"] in listen:
                endpoints.append({"type": "tcp", "name": entry["name"], "url": tcp_url(listen[entry["name"]]),
                                  "port": listen[entry["name"]], "internal_port": entry["port"], "access": PUBLIC,
                                  "ready": ready})
        return endpoints

    @extend_schema_field({"type": "string", "format": "decimal",
                          "description": "USD so far: its usage records plus what its replicas ran since, up to now."})
    def get_total_cost(self, obj: Deployment) -> str:
        if hasattr(obj, "metered_cost"):  # annotated by selectors.deployments_for
            return money_str(obj.metered_cost + obj.accruing_cost)
        return money_str(deployment_cost_for(deployment_id=obj.pk))

    @extend_schema_field(WarningOutput(many=True))
    def get_warnings(self, obj: Deployment) -> list[dict]:
        """The tenant's funds notices, on each deployment they can stop."""
        if obj.status not in LIVE_STATUSES:
            return []
        notices = getattr(obj, "funds_notices", None) or []
        return [{"code": "insufficient_funds" if n["kind"] == "exhausted" else n["kind"], "message": n["message"],
                 "stop_at": n["stop_at"]} for n in notices]

    @extend_schema_field({"type": ["string", "null"]})
    def get_registry_username(self, obj: Deployment):
        return obj.registry_username or None

    @extend_schema_field({"type": "string", "format": "decimal", "description": "USD per hour at the locked-in price."})
    def get_estimated_hourly_cost(self, obj: Deployment) -> str:
        return str(hourly_cost(price_per_gpu_hour=obj.price_per_gpu_hour, gpus_per_container=obj.gpus_per_container,
                               replica_count=obj.replica_count))


class DeploymentEnvelopeOutput(serializers.Serializer):
    deployment = DeploymentOutput()


class DeploymentCreatedOutput(serializers.Serializer):
    deployment = DeploymentOutput()
    estimated_hourly_cost = serializers.CharField(help_text="USD per hour, a decimal string.")


class DeleteResultOutput(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()


class ReplicaNodeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    hostname = serializers.CharField()
    location = serializers.CharField(source="location.slug")
    simulated = serializers.BooleanField(help_text="GPUs presented from a fake sysfs tree, not real hardware.")


class ReplicaGpuOutput(serializers.Serializer):
    index = serializers.IntegerField(help_text="The GPU's index on its node, in PCI order (as nvidia-smi numbers them).")
    uuid = serializers.CharField()
    model = serializers.CharField()
    bdf = serializers.CharField(source="pci_bdf", help_text="Its PCI address on the node.")
    numa_node = serializers.IntegerField(help_text="The host NUMA node it hangs off (-1: the firmware does not say).")
    nvlink = serializers.BooleanField(
        help_text="Whether this replica's GPUs talk over NVLink: true for a whole NVSwitch board, false for one GPU "
                  "(its NVLinks unused) and for PCIe cards.")


def _when(moment):
    return serializers.DateTimeField().to_representation(moment) if moment is not None else None


class ReplicaOutput(serializers.Serializer):
    """One incarnation of one ordinal: start after stop, restart and re-placement each make a
    new one (generation + 1); ended ones stay listed as history."""

    id = serializers.UUIDField(source="uid", help_text="The incarnation's id (its VM is named after it).")
    ordinal = serializers.IntegerField()
    generation = serializers.IntegerField(help_text="1 for the first incarnation of this ordinal, then +1 each time.")
    desired = serializers.ChoiceField(choices=Replica.Desired.choices, help_text="What the control plane wants.")
    state = serializers.ChoiceField(choices=Replica.State.choices, help_text="What its node last reported.")
    reason = serializers.CharField(help_text="Why the replica is in this state, for a human.")
    node = serializers.SerializerMethodField()
    gpus = serializers.SerializerMethodField()
    simulated = serializers.SerializerMethodField()
    endpoint = serializers.SerializerMethodField()
    host_port = serializers.IntegerField(allow_null=True)
    exit_code = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    placed_at = serializers.DateTimeField(allow_null=True, help_text="When the scheduler put it on its node.")
    booted_at = serializers.DateTimeField(allow_null=True, help_text="When its VM process started (`booting`).")
    started_at = serializers.DateTimeField(allow_null=True, help_text="When it first entered `running`.")
    stopped_at = serializers.DateTimeField(allow_null=True, help_text="When its VM ended (its node's report, or the "
                                           "node's last heartbeat if the node was lost); null if it never booted.")
    ended_at = serializers.DateTimeField(allow_null=True, help_text="When it reached a terminal state.")
    drain_until = serializers.DateTimeField(
        allow_null=True, help_text="While it drains (told to stop while it served): out of the gateway's pool, its "
                                   "VM still running so requests on it finish, until then.")
    billed_from = serializers.SerializerMethodField()
    billed_to = serializers.SerializerMethodField()

    @extend_schema_field(ReplicaNodeOutput(allow_null=True))
    def get_node(self, obj: Replica):
        return ReplicaNodeOutput(obj.node).data if obj.node_id else None

    @extend_schema_field(ReplicaGpuOutput(many=True))
    def get_gpus(self, obj: Replica):
        gpus = sorted(obj.gpus.all(), key=lambda g: g.index)
        domains = {g.nvlink_domain for g in gpus}
        nvlink = len(gpus) > 1 and len(domains) == 1 and "" not in domains
        return [ReplicaGpuOutput({"index": g.index, "uuid": g.uuid, "model": g.model, "pci_bdf": g.pci_bdf,
                                  "numa_node": g.numa_node, "nvlink": nvlink}).data for g in gpus]

    @extend_schema_field(serializers.BooleanField(help_text="Its node presents simulated GPUs (--simulate-gpus): "
                                                            "the VM ran without them."))
    def get_simulated(self, obj: Replica):
        return bool(obj.node_id and obj.node.simulated)

    @extend_schema_field(serializers.DateTimeField(
        allow_null=True, help_text="Where its billed interval starts: its VM's start (`booting`), rounded up to the "
                                   "second. Null if it never booted (nothing is billed)."))
    def get_billed_from(self, obj: Replica):
        return _when(billed_interval_of(obj)[0])

    @extend_schema_field(serializers.DateTimeField(
        allow_null=True, help_text="Where its billed interval ends: its VM's end, rounded down to the second. Null "
                                   "while it is open (the replica has not ended). Its usage records cover "
                                   "[billed_from, billed_to) exactly, at the price book's prices."))
    def get_billed_to(self, obj: Replica):
        return _when(billed_interval_of(obj)[1])

    @extend_schema_field({"type": ["string", "null"]})
    def get_endpoint(self, obj: Replica):
        if obj.state != Replica.State.RUNNING or not obj.node_id:
            return None
        return endpoint_url(address=obj.node.public_address, port=obj.host_port)


class ReplicaListOutput(serializers.Serializer):
    replicas = ReplicaOutput(many=True)


class LogLineOutput(serializers.Serializer):
    """A log line, in history and (without `timestamp`) in every live frame. Rendered by
    `feeds.line_item`, not field by field: a page holds up to 10,000 lines."""

    cursor = serializers.CharField(help_text="Opaque position in the deployment's log: pass it back as after= or before=.")
    replica = serializers.UUIDField(help_text="The incarnation that wrote the line (a replica's id).")
    ordinal = serializers.IntegerField(help_text="The replica's ordinal, shared by all its incarnations.")
    generation = serializers.IntegerField(help_text="The incarnation's generation.")
    seq = serializers.IntegerField(allow_null=True, help_text="Per-incarnation number from its node; null for a "
                                                              "system line the control plane wrote.")
    ts = serializers.DateTimeField(help_text="When the node read the line.")
    timestamp = serializers.DateTimeField(help_text="The same as ts (its name before cursors; kept for old clients).")
    stream = serializers.ChoiceField(choices=LogLine.Stream.choices)
    message = serializers.CharField(allow_blank=True, help_text="As written, JSON-escaped: ANSI escapes are kept, NUL "
                                                                "and invalid UTF-8 arrive as U+FFFD.")
    continued = serializers.BooleanField(help_text="The line goes on in the next line of its stream (lines over 64 KiB "
                                                   "come in pieces).")

    def to_representation(self, instance):
        return feeds.line_item(instance)


class LogListOutput(serializers.Serializer):
    logs = LogLineOutput(many=True)
    has_more = serializers.BooleanField(help_text="More lines lie beyond this page, in the direction it was read.")
    next_cursor = serializers.CharField(allow_null=True, help_text="Pass as after= for the lines that follow.")
    prev_cursor = serializers.CharField(allow_null=True, help_text="Pass as before= for the lines that precede.")
    truncated = serializers.BooleanField(
        help_text="The read's byte budget (8 MiB by default) ended this page before it held what was asked: a tail "
                  "or an after= page goes on with after=next_cursor, a before= page with before=prev_cursor.")


class EventOutput(serializers.Serializer):
    """An event, in the list and as the SSE stream's `data:` (Volant's type/name/status/timestamp)."""

    id = serializers.IntegerField(help_text="The cursor: ids grow in the order events were committed.")
    type = serializers.CharField(help_text="e.g. deployment.created, replica.running, node.cordoned.")
    deployment_id = serializers.UUIDField(allow_null=True)
    name = serializers.CharField(allow_null=True, help_text="The deployment's name.")
    status = serializers.CharField(allow_null=True, help_text="The deployment status or replica state it reached.")
    timestamp = serializers.DateTimeField()
    ts = serializers.DateTimeField(help_text="The same as timestamp.")
    payload = serializers.DictField()

    def to_representation(self, instance):
        return feeds.event_item(instance)


class EventListOutput(serializers.Serializer):
    events = EventOutput(many=True)
    has_more = serializers.BooleanField()
    next_cursor = serializers.IntegerField(allow_null=True, help_text="Pass as after= for the events that follow.")
    prev_cursor = serializers.IntegerField(allow_null=True, help_text="Pass as before= for the events that precede.")


class LogTicketOutput(serializers.Serializer):
    ticket = serializers.CharField(help_text="Single use; pass as ?ticket= to the WebSocket.")
    expires_at = serializers.DateTimeField()
    url = serializers.CharField(help_text="The WebSocket path with the ticket in it.")


class EndpointKeyOutput(serializers.Serializer):
    """A key to a private endpoint, without its secret (shown once, when made)."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The secret's first 11 characters (gk_ and 8 more), to tell keys apart.")
    created_at = serializers.DateTimeField()


class EndpointKeyListOutput(serializers.Serializer):
    keys = EndpointKeyOutput(many=True, help_text="Live keys, oldest first; revoked ones are not listed.")


class EndpointKeyCreatedOutput(serializers.Serializer):
    key = EndpointKeyOutput()
    secret = serializers.CharField(help_text="Send it as the Gantry-Key header. Shown this once: only its hash is kept.")


class RequestLatencyOutput(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True, help_text="Median total time of a request, ms; null without requests.")
    p99 = serializers.FloatField(allow_null=True, help_text="99th percentile, ms; null without requests.")


class RequestMinuteOutput(serializers.Serializer):
    minute = serializers.DateTimeField(help_text="The minute's start.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()


class RequestMetricsOutput(serializers.Serializer):
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField(help_text="The end of the current minute, which is still being counted.")
    requests = serializers.IntegerField(help_text="Requests the gateways answered for the deployment's endpoint.")
    errors = serializers.IntegerField(help_text="Of them, answers of 500-599 (the gateway's own 503s included).")
    error_rate = serializers.FloatField(allow_null=True, help_text="errors / requests; null without requests.")
    latency_ms = RequestLatencyOutput(
        help_text="From the gateways' latency histograms, summed: linear interpolation within the bucket the "
                  "quantile falls in (bounds 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, "
                  "60000 ms); in the last, unbounded bucket, 60000.")
    minutes = RequestMinuteOutput(many=True, help_text="One entry per minute of the window, oldest first, zero-filled.")
