"""Strict JSON fields: DRF's own coerce ("5" → 5, 5 → "5", true → 1), which hides client bugs
and lets a schema say one thing while the API accepts another. These accept only the JSON type
the schema names. The deployments and templates APIs both use them, so they live in cloud/."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cloud.registries import registry_refusal
from cloud.validators import env_errors, validate_image_reference


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false, not "yes", 1 or "on"."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class ImageReferenceField(StrictCharField):
    """An image reference a customer writes: valid syntax, and a registry a node may pull from
    on the customer's behalf (cloud/registries.py). Operators' references (the catalog, the
    admin) are not customer input and take only the syntax check."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 512)
        kwargs.setdefault("help_text", "OCI image reference: [registry[:port]/]repository[:tag][@sha256:<digest>]; "
                                       "registries on loopback, link-local or private addresses are refused")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            validate_image_reference(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0], code="invalid_image") from None
        refusal = registry_refusal(value, trusted=settings.GANTRY_TRUSTED_REGISTRIES)
        if refusal is not None:
            raise serializers.ValidationError(refusal, code="untrusted_registry")
        return value


@extend_schema_field({
    "type": "object",
    "additionalProperties": {"type": "string"},
    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 255},
    "maxProperties": 200,
})
class EnvField(serializers.Field):
    """NAME: "value" pairs; POSIX names, string values, bounded in count and total size."""

    def to_internal_value(self, data):
        errors = env_errors(data)
        if isinstance(errors, dict):  # per variable: the problem names `env.NAME`
            raise serializers.ValidationError({name: [message] for name, message in errors.items()}, code="invalid_env")
        if errors is not None:
            raise serializers.ValidationError(errors, code="invalid_env")
        return dict(data)

    def to_representation(self, value):
        return dict(value or {})


def string_list(*, item_max_length: int = 4096, max_length: int = 256, **kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=StrictCharField(max_length=item_max_length, allow_blank=True, trim_whitespace=False),
        max_length=max_length, **kwargs,
    )
