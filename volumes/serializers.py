"""What `/api/v1/volumes` accepts and returns."""

from __future__ import annotations

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cloud.fields import StrictCharField, StrictIntegerField
from protocol.wire import MAX_VOLUME_GIB
from volumes.models import Volume

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_HELP = "1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit; unique per tenant."


class VolumeCreateInput(serializers.Serializer):
    name = StrictCharField(max_length=63, help_text=NAME_HELP)
    size_gib = StrictIntegerField(min_value=1, max_value=MAX_VOLUME_GIB, help_text="Provisioned size in GiB.")
    location_id = StrictIntegerField(min_value=1, max_value=2**31 - 1, help_text="GET /api/v1/locations.")

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [serializers.ErrorDetail("Unknown field.", code="unknown_field")] for name in unknown})
        return super().to_internal_value(data)

    def validate_name(self, value):
        if not NAME_RE.fullmatch(value):
            raise serializers.ValidationError(NAME_HELP, code="invalid_name")
        return value


class AttachedOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    mount_path = serializers.CharField()
    mode = serializers.ChoiceField(choices=Volume.Mode.choices)


class VolumeOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    size_gib = serializers.IntegerField()
    location = serializers.SerializerMethodField()
    node = serializers.SerializerMethodField()
    state = serializers.ChoiceField(choices=Volume.State.choices)
    used_bytes = serializers.IntegerField(allow_null=True, help_text="What the guest last said it holds; null until known.")
    attached_to = serializers.SerializerMethodField()
    per_replica = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    @extend_schema_field({"type": "object", "properties": {"id": {"type": "integer"}, "slug": {"type": "string"}}})
    def get_location(self, obj: Volume) -> dict:
        return {"id": obj.location_id, "slug": obj.location.slug}

    @extend_schema_field({"type": ["object", "null"], "properties": {"id": {"type": "integer"},
                                                                     "hostname": {"type": "string"}}})
    def get_node(self, obj: Volume):
        return {"id": obj.node_id, "hostname": obj.node.hostname} if obj.node_id else None

    @extend_schema_field(AttachedOutput(many=True))
    def get_attached_to(self, obj: Volume) -> list[dict]:
        return [{"id": a.deployment_id, "name": a.deployment.name, "mount_path": a.mount_path, "mode": a.mode}
                for a in obj.attachments.all()]

    @extend_schema_field({"type": ["object", "null"], "properties": {"deployment_id": {"type": "string"},
                                                                     "ordinal": {"type": "integer"},
                                                                     "keep": {"type": "boolean"}}})
    def get_per_replica(self, obj: Volume):
        if obj.owner_deployment_id is None:
            return None
        return {"deployment_id": str(obj.owner_deployment_id), "ordinal": obj.ordinal, "keep": obj.keep}
