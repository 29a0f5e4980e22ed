"""What a deployment or a template may carry: image references, environment names and sizes;
and ids as they come in URLs and bodies. Shared by several apps, so it lives in cloud/ (DESIGN 3: imports run one way).

`validate_image_reference` implements the grammar of distribution/reference (the parser
Docker, containerd and the registries share):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    domain     := host [ ":" port ]          host: DNS name, IPv4 or [IPv6]
    path-comp. := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [\\w][\\w.-]{0,127}
    digest     := "sha256:" 64 lowercase hex digits

As in Docker, the first component is a registry only if it contains "." or ":" or is
"localhost"; otherwise it is a path component and must be lowercase ("Library/ubuntu" is
refused, not silently sent to a registry called "Library"). Syntax only: whether the image
exists is the registry's answer when a node pulls it.
"""

from __future__ import annotations

import uuid

import re

from django.core.exceptions import ValidationError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]{{1,5}})?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"

IMAGE_REFERENCE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_PATH_COMPONENT_RE = re.compile(rf"^{_PATH_COMPONENT}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# One label of a DNS name (RFC 1123), lowercase only: a deployment's endpoint label and every
# label of GANTRY_ENDPOINT_DOMAIN. Lowercase so that the name a customer is shown is exactly
# the name the gateway matches.
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_DNS_NAME_LENGTH = 253

MAX_IMAGE_REFERENCE_LENGTH = 512
MAX_IMAGE_NAME_LENGTH = 255
MAX_ENV_NAME_LENGTH = 255
MAX_ENV_VARIABLES = 200
# All names and values of one env mapping together: generous for configuration, far below
# what would bloat a row or a replica.start message (secrets travel in the same message).
MAX_ENV_TOTAL_BYTES = 64 * 1024


def is_dns_name(value: str) -> bool:
    return 0 < len(value) <= MAX_DNS_NAME_LENGTH and all(DNS_LABEL_RE.match(label) for label in value.split("."))


def _invalid_image(value: str) -> ValidationError:
    return ValidationError(
        f"'{value}' is not a valid OCI image reference: expected [registry[:port]/]repository[:tag][@sha256:<64 hex>] "
        "with a lowercase repository, e.g. 'ghcr.io/org/image:tag'.",
        code="invalid_image",
    )


def validate_image_reference(value: str) -> str:
    """Returns the reference unchanged, or raises ValidationError saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValidationError("An image reference is required, e.g. 'ollama/ollama:latest'.", code="invalid_image")
    if any(c.isspace() for c in value):
        raise ValidationError("An image reference may not contain whitespace.", code="invalid_image")
    if len(value) > MAX_IMAGE_REFERENCE_LENGTH:
        raise ValidationError(f"An image reference is at most {MAX_IMAGE_REFERENCE_LENGTH} characters.", code="invalid_image")
    match = IMAGE_REFERENCE_RE.match(value)
    if match is None:
        raise _invalid_image(value)
    domain = match.group("domain")
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        # Not a registry after all: a path component, which must be lowercase.
        if not _PATH_COMPONENT_RE.match(domain):
            raise _invalid_image(value)
    name_length = len(match.group("path")) + (len(domain) + 1 if domain else 0)
    if name_length > MAX_IMAGE_NAME_LENGTH:
        raise ValidationError(f"An image repository name is at most {MAX_IMAGE_NAME_LENGTH} characters.", code="invalid_image")
    return value


def validate_env_name(value) -> str:
    """POSIX-style names: letters, digits and underscores, not starting with a digit. Anything
    else would be dropped or mangled by a shell in the guest."""
    if not isinstance(value, str) or not ENV_NAME_RE.match(value) or len(value) > MAX_ENV_NAME_LENGTH:
        raise ValidationError(
            f"'{value}' is not a valid environment variable name (letters, digits and '_', not starting with a digit).",
            code="invalid_env_name",
        )
    return value


def env_errors(value) -> dict[str, str] | str | None:
    """Checks one env mapping. Returns None when valid, a message for the whole mapping, or
    {name: message} for the bad entries (the error handler turns those into `env.NAME`)."""
    if not isinstance(value, dict):
        return "Expected an object of NAME: \"value\" pairs."
    if len(value) > MAX_ENV_VARIABLES:
        return f"At most {MAX_ENV_VARIABLES} variables."
    errors: dict[str, str] = {}
    total = 0
    for name, item in value.items():
        try:
            validate_env_name(name)
        except ValidationError as exc:
            errors[str(name)] = exc.messages[0]
            continue
        if not isinstance(item, str):
            errors[name] = "Values must be strings (quote numbers and booleans)."
            continue
        if "\x00" in item:
            errors[name] = "Values may not contain NUL characters."
            continue
        total += len(name.encode()) + len(item.encode())
    if errors:
        return errors
    if total > MAX_ENV_TOTAL_BYTES:
        return f"Names and values together are at most {MAX_ENV_TOTAL_BYTES // 1024} KiB."
    return None


def as_uuid(value) -> uuid.UUID | None:
    """An id from a URL, a body or a node as a UUID, or None when it is not one: an id that is
    not a UUID names nothing, so callers answer "no such thing" rather than a validation error."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None
