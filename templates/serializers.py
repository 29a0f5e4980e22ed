from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from templates.models import Template
from cloud.deployments.validators import env_errors, validate_image_reference

MAX_GPUS_PER_REPLICA = 8  # one HGX board; a replica never spans nodes
MAX_LIST_ITEMS = 64
MAX_ITEM_LENGTH = 4096


def _django_to_drf(validator):
    def run(value):
        try:
            validator(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0], code=exc.code or "invalid") from exc
    return run


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


class _StringList(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(
            child=serializers.CharField(max_length=MAX_ITEM_LENGTH, allow_blank=True, trim_whitespace=False),
            max_length=MAX_LIST_ITEMS, allow_null=True, required=False, **kwargs,
        )


class TemplateInput(serializers.Serializer):
    """POST body (all of slug, name, image required) and PATCH body (any subset)."""

    slug = serializers.RegexField(
        r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", max_length=50,
        error_messages={"invalid": "Lowercase letters, digits and dashes, starting and ending with a letter or digit."},
    )
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=2000, allow_blank=True, required=False)
    image = serializers.CharField(max_length=512, validators=[_django_to_drf(validate_image_reference)], trim_whitespace=False)
    default_env = serializers.JSONField(required=False, help_text='{"NAME": "value"}: merged under a deployment\'s own env')
    entrypoint = _StringList()
    args = _StringList()
    traffic_port = serializers.IntegerField(min_value=1, max_value=65535, allow_null=True, required=False)
    min_gpus = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_REPLICA, required=False)
    max_gpus = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_REPLICA, required=False)
    health_check_path = serializers.RegexField(
        r"^/[^\s]*$", max_length=200, allow_blank=True, required=False,
        error_messages={"invalid": "A path starting with '/', without spaces."},
    )

    def validate_default_env(self, value) -> dict:
        # The deployments API's own rule, so a template can never hold env a deployment refuses.
        errors = env_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate(self, attrs):
        instance = self.instance
        min_gpus = attrs.get("min_gpus", instance.min_gpus if instance else 0)
        max_gpus = attrs.get("max_gpus", instance.max_gpus if instance else MAX_GPUS_PER_REPLICA)
        if min_gpus > max_gpus:
            raise serializers.ValidationError({"min_gpus": "min_gpus must not exceed max_gpus."})
        return attrs
