"""Endpoint keys: what a private endpoint's callers send as `Gantry-Key`.

The secret ("gk_" + 32 random bytes, URL-safe base64) is returned once, by the create; the
plane keeps its sha256, which is what the gateway's route table carries and checks against, and
its first characters as a prefix to tell keys apart. A revoke takes the hash out of the table
on the push it asks for, so a revoked key stops working within seconds. Both write an event in
the deployment's log, under its row lock (so the live-key limit holds under concurrent creates).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from cloud.deployments import selectors
from cloud.deployments.models import EndpointKey
from cloud.deployments.services.events import actor_label, event_record
from cloud.deployments.services.gateways import routes_changed
from cloud.exceptions import Conflict, InvalidInput, NotFound
from cloud.validators import as_uuid

SECRET_PREFIX = "gk_"
PREFIX_LENGTH = 11  # "gk_" and 8 characters of the secret: enough to tell a tenant's keys apart
MAX_LIVE_KEYS = 20
MAX_NAME_LENGTH = 100


def secret_hash(secret: str) -> str:
    """What the route table carries for a key, and what the gateway compares a Gantry-Key with."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_name_problem(name) -> str | None:
    """Why `name` cannot name a key, or None."""
    if not isinstance(name, str) or not name.strip():
        return "A key's name is 1-100 characters."
    if len(name) > MAX_NAME_LENGTH:
        return f"A key's name is at most {MAX_NAME_LENGTH} characters."
    if not name.isprintable():
        return "A key's name may not contain control or other unprintable characters."
    return None


@dataclass(frozen=True)
class MadeKey:
    key: EndpointKey
    secret: str  # shown once; not stored


def _actor(actor):
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


@transaction.atomic
def endpoint_key_create(*, tenant, actor, deployment_id, name: str) -> MadeKey:
    problem = key_name_problem(name)
    if problem:
        raise InvalidInput("name", problem)
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    live = EndpointKey.objects.filter(deployment=deployment, revoked_at__isnull=True).count()
    if live >= MAX_LIVE_KEYS:
        raise Conflict(f"A deployment has at most {MAX_LIVE_KEYS} live endpoint keys, and this one has {live}; "
                       "revoke one (DELETE .../endpoint-keys/{key_id}) before making another.",
                       extra={"live_keys": live, "max_live_keys": MAX_LIVE_KEYS})
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = EndpointKey.objects.create(deployment=deployment, name=name, prefix=secret[:PREFIX_LENGTH],
                                     secret_hash=secret_hash(secret), created_by=_actor(actor))
    event_record(tenant=tenant, deployment=deployment, type="endpoint_key.created", payload={
        "key_id": str(key.pk), "name": key.name, "prefix": key.prefix, "actor": actor_label(actor)})
    routes_changed()
    return MadeKey(key=key, secret=secret)


@transaction.atomic
def endpoint_key_revoke(*, tenant, actor, deployment_id, key_id) -> EndpointKey:
    """Revokes a live key; NotFound for a key of another deployment, a revoked one, or none."""
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    pk = as_uuid(key_id)
    key = (EndpointKey.objects.select_for_update().filter(pk=pk, deployment=deployment, revoked_at__isnull=True).first()
           if pk is not None else None)
    if key is None:
        raise NotFound(f"No endpoint key '{str(key_id)[:60]}'.")
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    event_record(tenant=tenant, deployment=deployment, type="endpoint_key.revoked", payload={
        "key_id": str(key.pk), "name": key.name, "prefix": key.prefix, "actor": actor_label(actor)})
    routes_changed()
    return key
