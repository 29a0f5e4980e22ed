"""Template request and response shapes. The field types (strict JSON types, OCI image
references, env mappings) are the deployments API's own (cloud/fields.py), so a template can never hold a value
that a deployment made from it would refuse."""

from __future__ import annotations

import re

from rest_framework import serializers

from cloud.fields import (
    EnvField,
    ImageReferenceField,
    StrictCharField,
    StrictIntegerField,
    string_list,
)
from templates.models import Template

MAX_GPUS_PER_REPLICA = 8  # one HGX board; a replica never spans nodes
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$"


class TemplateOutput(serializers.ModelSerializer):
    visibility = serializers.SerializerMethodField(help_text="'global' (from the operator) or 'private' (your tenant's)")

    class Meta:
        model = Template
        fields = [
            "id", "slug", "name", "description", "visibility", "image", "default_env", "entrypoint", "args",
            "traffic_port", "min_gpus", "max_gpus", "health_check_path", "created_at", "updated_at",
        ]
        read_only_fields = fields

    def get_visibility(self, obj: Template) -> str:
        return "global" if obj.is_global else "private"


class TemplateInput(serializers.Serializer):
    """POST body (slug, name and image required) and PATCH body (any subset)."""

    slug = StrictCharField(max_length=50, help_text="lowercase letters, digits and dashes")
    name = StrictCharField(max_length=100)
    description = StrictCharField(max_length=2000, allow_blank=True, required=False)
    image = ImageReferenceField()
    default_env = EnvField(required=False, help_text="merged under a deployment's own env")
    entrypoint = string_list(max_length=64, allow_null=True, required=False)
    args = string_list(max_length=256, allow_null=True, required=False)
    traffic_port = StrictIntegerField(min_value=1, max_value=65535, allow_null=True, required=False)
    min_gpus = StrictIntegerField(min_value=0, max_value=MAX_GPUS_PER_REPLICA, required=False)
    max_gpus = StrictIntegerField(min_value=0, max_value=MAX_GPUS_PER_REPLICA, required=False)
    health_check_path = StrictCharField(max_length=200, allow_blank=True, required=False,
                                        help_text="HTTP path probed on traffic_port, e.g. /health")

    def validate_slug(self, value: str) -> str:
        if not re.match(SLUG_PATTERN, value):
            raise serializers.ValidationError(
                "Lowercase letters, digits and dashes, starting and ending with a letter or digit.", code="invalid")
        return value

    def validate_health_check_path(self, value: str) -> str:
        if value and (not value.startswith("/") or any(c.isspace() for c in value)):
            raise serializers.ValidationError("A path starting with '/', without spaces.", code="invalid")
        return value

    def validate(self, attrs):
        instance = self.instance
        min_gpus = attrs.get("min_gpus", instance.min_gpus if instance else 0)
        max_gpus = attrs.get("max_gpus", instance.max_gpus if instance else MAX_GPUS_PER_REPLICA)
        if min_gpus > max_gpus:
            raise serializers.ValidationError({"min_gpus": "min_gpus must not exceed max_gpus."})
        return attrs
