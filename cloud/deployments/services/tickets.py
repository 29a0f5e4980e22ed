"""Tickets for the log WebSocket: browser code cannot set an Authorization header on a
WebSocket, and a bearer token in a URL ends up in proxy and server logs. So a caller who may
read a deployment trades its credentials for a ticket: 256 random bits, bound to that tenant,
user and deployment, valid for TICKET_TTL_S and good for exactly one socket.

Tickets live in the shared cache (Redis), stored under a hash of the ticket: whichever daphne
process the socket reaches can redeem it, and a cache dump shows nothing usable. Single use is
the cache's delete: of two sockets racing with one ticket, only the one whose delete removed
the key gets in.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.utils import timezone

from cloud.deployments import selectors
from cloud.streams import Access

TICKET_TTL_S = 30
PREFIX = "gtkt_"


@dataclass(frozen=True)
class Ticket:
    ticket: str
    expires_at: datetime
    deployment_id: uuid.UUID


@dataclass(frozen=True)
class Redeemed:
    access: Access  # what the ticket was issued on: the socket ends with it
    deployment_id: str


def _key(ticket: str) -> str:
    return "logticket:" + hashlib.sha256(ticket.encode()).hexdigest()


def log_ticket_issue(*, tenant, deployment_id, access: Access) -> Ticket:
    """NotFound for a deployment the tenant cannot see, as every other read. `access`: what the
    caller is let in with (streams.Caller.access); the socket the ticket opens lasts only as long
    as it does."""
    pk = selectors.deployment_id_for(tenant=tenant, deployment_id=deployment_id)
    ticket = PREFIX + secrets.token_urlsafe(32)
    cache.set(_key(ticket), {"tenant": tenant.pk, "user": access.user_id, "deployment": str(pk),
                             "token": access.token_id}, TICKET_TTL_S)
    return Ticket(ticket=ticket, expires_at=timezone.now() + timedelta(seconds=TICKET_TTL_S), deployment_id=pk)


def log_ticket_redeem(*, ticket: str, deployment_id: str) -> Redeemed | None:
    """The ticket's grant if it is valid for this deployment, once; None otherwise (unknown,
    expired, used, or issued for another deployment: a used ticket is gone either way)."""
    if not ticket.startswith(PREFIX) or len(ticket) > 100:
        return None
    key = _key(ticket)
    grant = cache.get(key)
    if grant is None or not cache.delete(key):
        return None
    try:
        if uuid.UUID(str(deployment_id)) != uuid.UUID(grant["deployment"]):
            return None
    except ValueError:
        return None
    return Redeemed(access=Access(tenant_id=grant["tenant"], user_id=grant["user"], token_id=grant.get("token")),
                    deployment_id=grant["deployment"])
