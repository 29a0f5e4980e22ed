"""What the deployments API accepts. io.net's deploy fields and Neuranet's (with their
camelCase spellings) are both accepted as they are and folded into one spec for the service.
Unknown fields are a 400 naming them: a typo must not silently deploy something else."""

from __future__ import annotations

import re
import uuid

from rest_framework import serializers

from cloud.deployments.models import (
    DEFAULT_MAX_REQUEST_BODY_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_REQUEST_BODY_MB,
    MAX_REQUEST_TIMEOUT_S,
)
from cloud.deployments.services.endpoint_keys import key_name_problem
from cloud.deployments.services.expose import NAME_RE as EXPOSE_NAME_RE
from cloud.deployments.services.expose import NAME_RULE as EXPOSE_NAME_RULE
from cloud.deployments.services.expose import TRAFFIC_PORT_NAME
from cloud.fields import (
    EnvField,
    ImageReferenceField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    string_list,
)
from protocol.vocabulary import (
    ENDPOINT_ACCESSES,
    EXPOSE_PROTOCOLS,
    HEALTH_PATH_RE,
    LOG_STREAMS,
    MAX_EXPOSED_PORTS,
    PRIVATE,
    PUBLIC,
)
from protocol.wire import MAX_VOLUME_GIB, MAX_VOLUMES_PER_REPLICA, mount_path_problem
from volumes.services import Requested

NAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_HELP = "1-100 characters: letters, digits, '.', '_' and '-', starting with a letter or digit; unique per tenant."

MAX_REPLICAS = 100
MAX_DURATION_HOURS = 8760  # a year
MAX_GPUS_PER_CONTAINER = 8  # one HGX board


MAX_STOP_GRACE_S = 300
MAX_LOG_LINES = 10_000  # one page or one replay: what a reader gets at once


class _StrictInput(serializers.Serializer):
    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [serializers.ErrorDetail("Unknown field.", code="unknown_field")] for name in unknown}
                )
        return super().to_internal_value(data)


def _opt(field_cls, **kwargs):
    kwargs.setdefault("required", False)
    kwargs.setdefault("allow_null", True)
    return field_cls(**kwargs)


class StrictChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_choice", input=str(data)[:40])
        return super().to_internal_value(data)


class ShareInput(_StrictInput):
    """The sandbox seed's spelling of endpoint access."""

    is_public = StrictBooleanField(help_text="true: the endpoint is public; false: private (endpoint keys only).")


class ExposeInput(_StrictInput):
    """One port beside traffic_port, served by the gateway (Volant's `expose`)."""

    name = StrictCharField(max_length=15, trim_whitespace=False,
                           help_text=f"{EXPOSE_NAME_RULE}; not \"{TRAFFIC_PORT_NAME}\" (traffic_port's). An HTTP "
                                     "port is served at https://<endpoint_label>-<name>.<domain>.")
    port = StrictIntegerField(min_value=1, max_value=65535, help_text="The container's port.")
    protocol = StrictChoiceField(choices=list(EXPOSE_PROTOCOLS), help_text=(
        "http: its own https name at the gateway, with the deployment's endpoint access; tcp: a port of its own on "
        "the gateway, open to anyone (no endpoint key can be checked)."))

    def validate_name(self, value):
        if not EXPOSE_NAME_RE.fullmatch(value):
            raise serializers.ValidationError(f"A port's name is {EXPOSE_NAME_RULE}.", code="invalid_name")
        if value == TRAFFIC_PORT_NAME:
            raise serializers.ValidationError(f"\"{TRAFFIC_PORT_NAME}\" names traffic_port; give this port another "
                                              "name.", code="reserved_name")
        return value


def _expose_list(entries: list) -> list[dict]:
    """The list as a whole: names and ports each once."""
    for key in ("name", "port"):
        seen = set()
        for i, entry in enumerate(entries):
            if entry[key] in seen:
                raise serializers.ValidationError(
                    {i: {key: [serializers.ErrorDetail(f"{key} {entry[key]!r} is given twice; each port and each "
                                                       "name once.", code="duplicate")]}})
            seen.add(entry[key])
    return [{"name": e["name"], "port": e["port"], "protocol": e["protocol"]} for e in entries]


ENDPOINT_ACCESS_HELP = ("private: the gateway answers only requests carrying one of the deployment's endpoint keys "
                        "in the Gantry-Key header; public: anyone who has the URL.")


class _EndpointSettingsInput(_StrictInput):
    """The gateway's settings of a deployment, in the create and the PATCH body alike."""

    endpoint_access = _opt(StrictChoiceField, choices=list(ENDPOINT_ACCESSES),
                           help_text=ENDPOINT_ACCESS_HELP + " Default at creation: private.")
    share = ShareInput(required=False, allow_null=True, help_text='Alias of endpoint_access: {"is_public": true} is '
                                                                  '"public", false "private".')
    request_timeout_s = _opt(StrictIntegerField, min_value=1, max_value=MAX_REQUEST_TIMEOUT_S,
                             help_text=f"Seconds a request through the gateway may take, and a stream may stay idle "
                                       f"(default {DEFAULT_REQUEST_TIMEOUT_S}, at most {MAX_REQUEST_TIMEOUT_S}).")
    max_request_body_mb = _opt(StrictIntegerField, min_value=1, max_value=MAX_REQUEST_BODY_MB,
                               help_text=f"Largest request body the gateway lets through, in MiB (default "
                                         f"{DEFAULT_MAX_REQUEST_BODY_MB}, at most {MAX_REQUEST_BODY_MB}).")
    expose = serializers.ListField(
        child=ExposeInput(), required=False, allow_null=True, max_length=MAX_EXPOSED_PORTS,
        help_text=f"Up to {MAX_EXPOSED_PORTS} ports beside traffic_port, each published by the nodes and served by "
                  "the gateway; a PATCH replaces the list (new ports reach a replica when it next starts).")
    allow_public_tcp = _opt(StrictBooleanField, help_text=(
        "Required (true) for a TCP port on a private deployment: a TCP port carries no endpoint key, so it is open "
        "to anyone who finds it."))

    def validate_expose(self, value):
        return None if value is None else _expose_list(value)


class VolumeInput(_StrictInput):
    """One volume of a deployment: an existing volume by id, or (without volume_id) a
    per-replica volume of size_gib that each ordinal gets for its own."""

    volume_id = _opt(StrictCharField, max_length=64, help_text="A volume of yours (GET /api/v1/volumes).")
    mount_path = StrictCharField(max_length=255, trim_whitespace=False,
                                 help_text="Where the container sees it, e.g. /data (made if missing).")
    mode = _opt(StrictChoiceField, choices=["rw", "ro"], help_text='"rw" (default) or "ro". A read-write volume '
                "belongs to one deployment with one replica; a read-only one may be shared.")
    size_gib = _opt(StrictIntegerField, min_value=1, max_value=MAX_VOLUME_GIB,
                    help_text="Per-replica volume (no volume_id): each ordinal's own volume, made at its first "
                              "placement and kept across restarts and scale down/up.")
    keep = _opt(StrictBooleanField, help_text="Per-replica volume: kept (as your volume) when the deployment is "
                                              "deleted. Default false: erased with it.")

    def validate_mount_path(self, value):
        problem = mount_path_problem(value)
        if problem:
            raise serializers.ValidationError(f"mount_path {problem}.", code="invalid_mount_path")
        return value

    def validate(self, attrs):
        if attrs.get("volume_id") is not None:
            if attrs.get("size_gib") is not None or attrs.get("keep") is not None:
                raise serializers.ValidationError({"size_gib": "size_gib and keep are for a per-replica volume "
                                                               "(no volume_id); an existing volume has its size."})
            return {"volume_id": attrs["volume_id"], "mount_path": attrs["mount_path"], "mode": attrs.get("mode") or "rw"}
        if attrs.get("size_gib") is None:
            raise serializers.ValidationError({"volume_id": "Give a volume_id, or a size_gib for a per-replica volume."})
        if attrs.get("mode") == "ro":
            raise serializers.ValidationError({"mode": "A per-replica volume is its replica's own: read-write."})
        return {"size_gib": attrs["size_gib"], "mount_path": attrs["mount_path"], "keep": bool(attrs.get("keep"))}


def _volume_list(entries: list) -> Requested:
    paths = [e["mount_path"] for e in entries]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise serializers.ValidationError({i: {"mount_path": [serializers.ErrorDetail(
                f"mount_path {path!r} is given twice; one volume per path.", code="duplicate")]}})
    ids = [e["volume_id"] for e in entries if "volume_id" in e]
    if len(set(ids)) != len(ids):
        raise serializers.ValidationError("A volume is named twice; attach each once.")
    templates = [e for e in entries if "volume_id" not in e]
    if len(templates) > 1:
        raise serializers.ValidationError("At most one per-replica volume (size_gib without volume_id).")
    return Requested(attach=[e for e in entries if "volume_id" in e], template=templates[0] if templates else None)


VOLUMES_HELP = (f"Up to {MAX_VOLUMES_PER_REPLICA} volumes, each {{volume_id, mount_path, mode}}, or one per-replica "
                "{size_gib, mount_path, keep}. A PATCH replaces the list (what runs restarts, rolling, to take it).")


def _endpoint_changes(attrs: dict) -> dict:
    """The endpoint settings a body gives, with share.is_public folded into endpoint_access."""
    access = attrs.get("endpoint_access")
    share = attrs.get("share")
    if share is not None:
        shared = PUBLIC if share["is_public"] else PRIVATE
        if access is not None and access != shared:
            raise serializers.ValidationError({"endpoint_access": (
                f"endpoint_access is {access!r} but share.is_public is {str(share['is_public']).lower()}; "
                "give one of them, or the same answer in both.")})
        access = shared
    changes = {"endpoint_access": access} if access is not None else {}
    for name in ("request_timeout_s", "max_request_body_mb", "expose", "allow_public_tcp"):
        if attrs.get(name) is not None:
            changes[name] = attrs[name]
    return changes


class DeploymentCreateInput(_EndpointSettingsInput):
    image_required = True

    # Neuranet
    name = _opt(StrictCharField, max_length=100, help_text=NAME_HELP + " Generated when omitted.")
    template_id = _opt(StrictCharField, max_length=50, help_text="A template slug or id (GET /api/v1/templates); the tenant's private template wins over a global one.")
    templateId = _opt(StrictCharField, max_length=50, help_text="Alias of template_id.")
    custom_image = _opt(ImageReferenceField, help_text="Alias of image_url.")
    customImage = _opt(ImageReferenceField, help_text="Alias of image_url.")
    node_id = _opt(StrictIntegerField, min_value=1, max_value=2**63 - 1, help_text="Pin every replica to this node (GET /api/v1/nodes).")
    nodeId = _opt(StrictIntegerField, min_value=1, max_value=2**63 - 1, help_text="Alias of node_id.")
    env = _opt(EnvField, help_text="Plain environment variables, merged over the template's defaults.")
    # io.net
    resource_private_name = _opt(StrictCharField, max_length=100, help_text="Alias of name.")
    duration_hours = _opt(StrictIntegerField, min_value=1, max_value=MAX_DURATION_HOURS,
                          help_text="Run time from creation; the deployment expires after it. Omit for no expiry.")
    gpus_per_container = _opt(StrictIntegerField, min_value=0, max_value=MAX_GPUS_PER_CONTAINER,
                              help_text="GPUs per replica; must be one of the hardware type's allowed_gpu_counts and within the "
                                        "template's range. Default: the smallest count that fits.")
    hardware_id = _opt(StrictIntegerField, min_value=1, max_value=2**31 - 1,
                       help_text="Hardware type id (GET /api/v1/hardware). Default: the pinned node's type, else the "
                                 "cheapest type offering a fitting GPU count.")
    location_ids = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=2**31 - 1), required=False, allow_null=True, max_length=50,
        help_text="Allowed locations (GET /api/v1/locations); empty or omitted: any.",
    )
    replica_count = _opt(StrictIntegerField, min_value=1, max_value=MAX_REPLICAS, help_text="Default 1.")
    env_variables = _opt(EnvField, help_text="Alias of env.")
    secret_env_variables = _opt(EnvField, help_text="Secret variables: encrypted at rest, never returned (only their names).")
    entrypoint = string_list(required=False, allow_null=True, help_text="Exec-form entrypoint; default the template's or the image's.")
    args = string_list(required=False, allow_null=True, help_text="Arguments appended to the entrypoint.")
    traffic_port = _opt(StrictIntegerField, min_value=1, max_value=65535, help_text="The container's HTTP port, published as the endpoint.")
    health_check_path = _opt(StrictCharField, max_length=256, allow_blank=True,
                             help_text="The path the node's health check GETs on traffic_port (an answer of 500 or "
                                       "more fails it, and a failing replica takes no traffic); default the "
                                       "template's; empty: a TCP connect.")
    stop_grace_seconds = _opt(StrictIntegerField, min_value=0, max_value=MAX_STOP_GRACE_S,
                              help_text="Seconds a stopping workload gets after ACPI power-off before it is killed (default 10, at most 300).")
    image_url = _opt(ImageReferenceField, help_text="The image to run instead of a template's, e.g. ghcr.io/org/image:tag.")
    registry_username = _opt(StrictCharField, max_length=200, allow_blank=True)
    registry_secret = _opt(StrictCharField, max_length=4096, allow_blank=True, write_only=True,
                           help_text="Registry password or token: encrypted at rest, never returned.")
    volumes = serializers.ListField(child=VolumeInput(), required=False, allow_null=True,
                                    max_length=MAX_VOLUMES_PER_REPLICA, help_text=VOLUMES_HELP)

    def validate_volumes(self, value):
        return None if value is None else _volume_list(value)

    def validate_name(self, value):
        return _valid_name(value)

    def validate_resource_private_name(self, value):
        return _valid_name(value)

    def validate_health_check_path(self, value):
        if value and not HEALTH_PATH_RE.fullmatch(value):
            raise serializers.ValidationError("An absolute path of visible ASCII (no spaces), e.g. /health.")
        return value

    def validate(self, attrs):
        name = _one_of(attrs, "name", "resource_private_name")
        template = _one_of(attrs, "template_id", "templateId")
        image = _one_of(attrs, "image_url", "custom_image", "customImage")
        node_id = _one_of(attrs, "node_id", "nodeId")
        env = _one_of(attrs, "env", "env_variables")
        secret_env = attrs.get("secret_env_variables") or {}

        if template and image:
            raise serializers.ValidationError(
                {"template_id": "Give a template_id or an image (image_url / custom_image), not both."}
            )
        if not template and not image and self.image_required:
            raise serializers.ValidationError(
                {"template_id": "Required: a template_id, or an image in image_url / custom_image."}
            )
        overlap = sorted(set(env or {}) & set(secret_env))
        if overlap:
            raise serializers.ValidationError(
                {"secret_env_variables": f"{', '.join(overlap)} is also a plain variable; a name is plain or secret, not both."}
            )
        location_ids = attrs.get("location_ids") or []
        return {
            "name": name, "template": template, "image": image, "node_id": node_id,
            "env": env or {}, "secret_env": secret_env,
            "gpus_per_container": attrs.get("gpus_per_container"), "hardware_id": attrs.get("hardware_id"),
            "location_ids": list(dict.fromkeys(location_ids)),  # de-duplicated, order kept
            "replica_count": attrs.get("replica_count") or 1, "duration_hours": attrs.get("duration_hours"),
            "entrypoint": attrs.get("entrypoint"), "args": attrs.get("args"), "traffic_port": attrs.get("traffic_port"),
            "registry_username": attrs.get("registry_username") or "", "registry_secret": attrs.get("registry_secret") or "",
            "stop_grace_seconds": attrs.get("stop_grace_seconds"), "health_check_path": attrs.get("health_check_path"),
            "volumes": attrs.get("volumes"),
            **_endpoint_changes(attrs),
        }


class DeploymentEstimateInput(DeploymentCreateInput):
    """The create body, for `POST /deployments/estimate`: nothing about the image is priced, so
    it may be left out (the cheapest fitting hardware is quoted, as create would pick it)."""

    image_required = False


def _valid_name(value):
    if value is None:
        return value
    if not re.match(NAME_REGEX, value):
        raise serializers.ValidationError(NAME_HELP, code="invalid_name")
    return value


def _one_of(attrs: dict, *names: str):
    """The value given under any of the alias `names`; two different values is a 400 on the
    second spelling."""
    given = [(n, attrs[n]) for n in names if attrs.get(n) is not None]
    if len({repr(v) for _, v in given}) > 1:
        raise serializers.ValidationError({given[1][0]: f"Conflicts with {given[0][0]}; give one of {', '.join(names)}."})
    return given[0][1] if given else None


class DeploymentUpdateInput(_EndpointSettingsInput):
    replica_count = StrictIntegerField(required=False, min_value=1, max_value=MAX_REPLICAS)
    duration_hours = StrictIntegerField(required=False, min_value=1, max_value=MAX_DURATION_HOURS,
                                        help_text="Total run time from creation; may only grow.")
    stop_grace_seconds = StrictIntegerField(required=False, min_value=0, max_value=MAX_STOP_GRACE_S,
                                            help_text="Seconds between ACPI power-off and the kill (applies to later stops).")
    env = EnvField(required=False, help_text="Replaces the plain environment.")
    env_variables = EnvField(required=False, help_text="Alias of env.")
    secret_env_variables = EnvField(required=False, help_text="Replaces the secret environment.")
    volumes = serializers.ListField(child=VolumeInput(), required=False, max_length=MAX_VOLUMES_PER_REPLICA,
                                    help_text=VOLUMES_HELP)

    def validate_volumes(self, value):
        return _volume_list(value)

    def validate(self, attrs):
        env = _one_of(attrs, "env", "env_variables")
        changes = {k: attrs[k] for k in ("replica_count", "duration_hours", "stop_grace_seconds", "volumes")
                   if k in attrs}
        changes.update(_endpoint_changes(attrs))
        if env is not None:
            changes["env"] = env
        if "secret_env_variables" in attrs:
            changes["secret_env"] = attrs["secret_env_variables"]
        overlap = sorted(set(changes.get("env") or {}) & set(changes.get("secret_env") or {}))
        if overlap:
            raise serializers.ValidationError(
                {"secret_env_variables": f"{', '.join(overlap)} is also a plain variable; a name is plain or secret, not both."}
            )
        return changes


class EndpointKeyCreateInput(_StrictInput):
    name = StrictCharField(max_length=100, trim_whitespace=False,
                           help_text="1-100 printable characters, for you to tell keys apart (e.g. who holds it).")

    def validate_name(self, value):
        problem = key_name_problem(value)
        if problem:
            raise serializers.ValidationError(problem, code="invalid_name")
        return value


class LogCursorField(serializers.CharField):
    """A line's `cursor`, passed back as it was given: opaque to clients (digits today)."""

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        if not text.isdigit() or len(text) > 18:
            raise serializers.ValidationError("Not a log cursor: pass back the `cursor` of a line.", code="invalid")
        return int(text)


class ReplicaRefField(serializers.CharField):
    """A replica's ordinal (every incarnation of it) or one incarnation's id (a UUID)."""

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        if text.isdigit() and len(text) <= 5 and int(text) <= 32767:
            return int(text)
        try:
            return uuid.UUID(text)
        except ValueError:
            raise serializers.ValidationError("A replica's ordinal or an incarnation's id.", code="invalid") from None


class LogsQuery(serializers.Serializer):
    tail = serializers.IntegerField(min_value=1, max_value=MAX_LOG_LINES, default=100,
                                    help_text="Without a cursor: the newest N lines (1-10000).")
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; only lines at or after this time.")
    after = LogCursorField(required=False, help_text="A line's cursor: the lines after it, oldest first.")
    before = LogCursorField(required=False, help_text="A line's cursor: the lines right before it.")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LOG_LINES, default=100,
                                     help_text="Page size with `after` or `before` (1-10000).")
    replica = ReplicaRefField(required=False, help_text="A replica's ordinal (all its incarnations) or an incarnation's id.")
    stream = serializers.ChoiceField(choices=list(LOG_STREAMS), required=False)


class LogTailQuery(serializers.Serializer):
    """The WebSocket tail's query string (`?ticket=` and `?tenant=` are read by its auth)."""

    tail = serializers.IntegerField(min_value=0, max_value=MAX_LOG_LINES, default=100,
                                    help_text="Replay the newest N lines first (0-10000).")
    after = LogCursorField(required=False, help_text="Replay every line after this cursor, whatever tail says.")
    replica = ReplicaRefField(required=False)
    stream = serializers.ChoiceField(choices=list(LOG_STREAMS), required=False)
    ticket = serializers.CharField(required=False, max_length=200)
    tenant = serializers.CharField(required=False, max_length=60)


class EventsQuery(serializers.Serializer):
    after = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1,
                                     help_text="Cursor: only events with a greater id.")
    before = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1,
                                      help_text="Cursor: the events right before this id.")
    limit = serializers.IntegerField(min_value=1, max_value=500, default=100)


class EventStreamQuery(serializers.Serializer):
    after = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1,
                                     help_text="Resume after this event id (Last-Event-ID wins when both are sent).")
    deployment = serializers.UUIDField(required=False, help_text="Only this deployment's events.")
    type = serializers.CharField(required=False, max_length=500,
                                 help_text="Comma-separated event types; `replica.*` matches a prefix.")
    follow = serializers.BooleanField(default=True, help_text="false: send what is there and end the stream.")

    def validate_type(self, value: str) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in value.split(",") if k.strip())
        for kind in kinds:
            if not re.fullmatch(r"[a-z_]+(\.[a-z_]+|\.\*)?", kind):
                raise serializers.ValidationError(f"Not an event type: {kind[:50]!r}.")
        return kinds


class ReplicasQuery(serializers.Serializer):
    live = serializers.BooleanField(default=False, help_text="true: only incarnations not yet stopped, failed or lost.")


class RequestMetricsQuery(serializers.Serializer):
    minutes = serializers.IntegerField(min_value=1, max_value=1440, default=60,
                                       help_text="The window: this many minutes, ending with the current one.")
