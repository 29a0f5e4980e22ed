"""A deployment's endpoint label: the DNS label the gateway serves it under
(`<label>.<GANTRY_ENDPOINT_DOMAIN>`, issue 25).

Made once, when the deployment is written, from its name and a random suffix, and never
changed: the name a customer gave out keeps pointing at the same deployment through restarts,
scaling, re-placement and node loss. The column is unique over every row, deleted ones
included, so a label is never handed to another deployment (or another tenant) later
(docs/architecture.md, "Endpoint labels").
"""

from __future__ import annotations

import re
import secrets

from django.conf import settings

MAX_LABEL_LENGTH = 63  # one DNS label
SUFFIX_LENGTH = 6
# RFC 4648 base32, lowercased: 30 bits per suffix, and no character a DNS label refuses.
_SUFFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_OUTSIDE_LABEL = re.compile(r"[^a-z0-9]+")
_EMPTY_NAME_BASE = "deployment"


def label_base(name: str) -> str:
    """The name's part of a label: lowercased, each run of other characters one '-', trimmed,
    cut to leave room for the suffix."""
    base = _OUTSIDE_LABEL.sub("-", name.lower()).strip("-")
    return base[:MAX_LABEL_LENGTH - SUFFIX_LENGTH - 1].rstrip("-") or _EMPTY_NAME_BASE


def endpoint_label(name: str) -> str:
    """A fresh label for a deployment called `name`, e.g. `my-ollama-k3x9qz`. Unique only with
    overwhelming probability: the database's constraint decides, and the writer retries."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
    return f"{label_base(name)}-{suffix}"


def endpoint_host(label: str) -> str:
    return f"{label}.{settings.GANTRY_ENDPOINT_DOMAIN}"


def expose_label(label: str, name: str) -> str:
    """The gateway's label for the port `name` of a deployment's `expose` (services/expose.py
    keeps it one DNS label)."""
    return f"{label}-{name}"
