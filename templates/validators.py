"""Validators for what a customer may put in a template (and, reused, in a deployment).

`validate_image_reference` follows the grammar of distribution/reference (the one Docker,
containerd and every OCI registry client parse): `[domain[:port]/]path[:tag][@digest]`, lowercase
path components, a tag of at most 128 characters, a name of at most 255. It checks syntax only:
whether the image exists is the registry's business, answered when a node pulls it.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

IMAGE_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_IMAGE_REFERENCE_LENGTH = 512
MAX_IMAGE_NAME_LENGTH = 255
MAX_ENV_NAME_LENGTH = 255


def validate_image_reference(value: str) -> str:
    """Returns the reference unchanged, or raises ValidationError saying what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("An image reference is required, e.g. 'ollama/ollama:latest'.", code="invalid_image")
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValidationError("An image reference may not contain whitespace.", code="invalid_image")
    if len(value) > MAX_IMAGE_REFERENCE_LENGTH:
        raise ValidationError(f"An image reference is at most {MAX_IMAGE_REFERENCE_LENGTH} characters.", code="invalid_image")
    match = IMAGE_REFERENCE_RE.match(value)
    if match is None:
        raise ValidationError(
            f"'{value}' is not a valid OCI image reference ([registry/]repository[:tag][@digest], "
            "lowercase repository).",
            code="invalid_image",
        )
    if len(match.group("name")) > MAX_IMAGE_NAME_LENGTH:
        raise ValidationError(f"An image repository name is at most {MAX_IMAGE_NAME_LENGTH} characters.", code="invalid_image")
    return value


def validate_env_name(value: str) -> str:
    """POSIX-style environment variable names: letters, digits and underscores, not starting
    with a digit. Anything else would be silently dropped or mangled by a shell in the guest."""
    if not isinstance(value, str) or not ENV_NAME_RE.match(value) or len(value) > MAX_ENV_NAME_LENGTH:
        raise ValidationError(
            f"'{value}' is not a valid environment variable name (letters, digits and '_', not starting with a digit).",
            code="invalid_env_name",
        )
    return value
