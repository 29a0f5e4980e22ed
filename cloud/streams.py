"""Who is calling a stream, for the endpoints DRF does not serve: the SSE feed (an async Django
view) and the WebSocket consumers. They authenticate as the API does, so a token that may not
read a deployment through REST cannot read it through a socket either:

- an OAuth2 bearer token (DOT's own validator: expiry, revocation) that carries the scope;
- else the dashboard's session;
and they act for one tenant, resolved through `cloud.tenancy` (the accounts app's rules) exactly as for
a REST call (`X-Tenant`, or `?tenant=` where a browser cannot set headers).

A stream outlives the check it opened with, so every open one checks again every
STREAM_ACCESS_RECHECK_S (`access_lost`) and ends, saying why, once its token is revoked or
expired or its user is no longer a member of the tenant.

Browser sockets also get an Origin check (`BrowserOriginValidator`): a session cookie is
ambient authority, and without the check any page a customer visits could open their logs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from channels.consumer import get_handler_name
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.http.request import validate_host
from oauthlib.common import Request as OAuthRequest
from oauth2_provider.settings import oauth2_settings

from cloud.tenancy import TenantForbidden, access_standing, tenant_for_request


class StreamRefused(Exception):
    """The caller may not open this stream; `status` as the REST API would answer."""

    def __init__(self, status: int, detail: str, code: str):
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


@dataclass(frozen=True)
class Caller:
    user: object | None
    token: object | None  # an oauth2_provider AccessToken, or None for a session
    tenant: object
    role: str = ""  # the user's role in the tenant, or "service" for a service account's token

    @property
    def access(self) -> Access:
        return Access(tenant_id=self.tenant.pk, user_id=None if self.role == "service" else getattr(self.user, "pk", None),
                      token_id=getattr(self.token, "pk", None))


@dataclass(frozen=True)
class Access:
    """What an open stream was let in with, checked again while it runs (`access_lost`): a
    token can be revoked or expire, and a member be removed, long after the socket opened."""

    tenant_id: int
    user_id: int | None  # whose membership of the tenant it rests on; None for a service account
    token_id: int | None  # the bearer token it rests on; None for the dashboard's session


def access_lost(access: Access) -> StreamRefused | None:
    """Why the stream must end now (its token is gone or expired, its user no longer a member
    or deactivated), or None while it may go on. One indexed query, so every open stream can
    afford it every few seconds; it catches every way access ends (DOT's revoke endpoint, an
    API client deleted, a member removed, expiry) without a hook in each. Blocking."""
    row = access_standing(tenant_id=access.tenant_id, user_id=access.user_id, token_id=access.token_id)
    if not row.get("token", True):
        return StreamRefused(401, "The bearer token was revoked or has expired.", "not_authenticated")
    if not row.get("member", True):
        return StreamRefused(403, "You are no longer a member of this tenant.", "tenant_forbidden")
    return None


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header; None when there is no such header."""
    if not authorization:
        return None
    kind, _, token = authorization.partition(" ")
    return token.strip() if kind.lower() == "bearer" else ""


def caller_for(*, authorization: str | None, session_user, tenant_slug: str | None, scope: str) -> Caller:
    """The caller of a stream, or StreamRefused (401 without valid credentials, 403 for a token
    without `scope` or a tenant the user is not in). Blocking: call through sync_to_async."""
    token_text = bearer(authorization)
    token = None
    if token_text is not None:
        request = OAuthRequest("/")
        if not token_text or not oauth2_settings.OAUTH2_VALIDATOR_CLASS().validate_bearer_token(token_text, [], request):
            raise StreamRefused(401, "The bearer token is invalid, expired or revoked.", "not_authenticated")
        token = request.access_token
        if not token.allow_scopes([scope]):
            raise StreamRefused(403, f"This token lacks the scope(s): {scope}.", "permission_denied")
        user = token.user
    elif session_user is not None and session_user.is_authenticated:
        user = session_user
    else:
        raise StreamRefused(401, "Send an OAuth2 bearer token (see /o/token/).", "not_authenticated")
    try:
        tenant, role = tenant_for_request(user=user, token=token, tenant_slug=tenant_slug)
    except TenantForbidden as exc:
        raise StreamRefused(403, exc.detail, exc.code) from None
    return Caller(user=user, token=token, tenant=tenant, role=role)


def allowed_origins() -> list[str]:
    """Where browser code may open our sockets from: the dashboard's own origins (those CSRF
    trusts) plus `WS_ALLOWED_ORIGINS`, and any origin whose host is in ALLOWED_HOSTS."""
    return [*settings.CSRF_TRUSTED_ORIGINS, *getattr(settings, "WS_ALLOWED_ORIGINS", [])]


class BrowserOriginValidator(OriginValidator):
    """Channels' OriginValidator refuses a socket without an Origin header; programs (the node
    agent, a CLI following logs) send none, and only browsers can be tricked into carrying a
    cookie to us, and browsers always send one. So: no Origin passes, a foreign one is refused
    before the socket opens."""

    def __init__(self, application):
        super().__init__(application, allowed_origins())

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        if parsed_origin.hostname and validate_host(parsed_origin.hostname, settings.ALLOWED_HOSTS):
            return True
        return self.validate_origin(parsed_origin)


def daphne_protocol(send):
    """daphne's Twisted protocol behind an ASGI `send` (daphne hands the application
    `partial(server.handle_reply, protocol)`), through the wrappers Channels puts in front of
    it (the session middleware's), or None under any other server."""
    for _ in range(8):
        if isinstance(send, functools.partial):
            protocol = send.args[0] if send.args else None
            if protocol is not None and hasattr(protocol, "transport"):
                return protocol
            send = send.func
        owner = getattr(send, "__self__", None)
        inner = getattr(owner, "real_send", None) if owner is not None else None
        if inner is None:
            return None
        send = inner
    return None


def _transport_of(send):
    protocol = daphne_protocol(send)
    return getattr(protocol, "transport", None) if protocol is not None else None


def send_buffer(send) -> Callable[[], int | None]:
    """A probe of how many bytes the connection behind `send` holds that the client has not
    taken yet (None: unknown). daphne buffers every frame it is given, whatever the client
    reads (django/daphne#170, open since 2018); until it passes backpressure to the
    application, this reads the transport's own counters: what Twisted's FileDescriptor holds
    beyond what the kernel took."""
    transport = _transport_of(send)
    if transport is None or not all(hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
        return lambda: None

    def probe() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return probe


class NoConnectionSweep:
    """For consumers whose every database call goes through database_sync_to_async (which
    closes stale connections itself, in its own thread): skip the sweep Channels runs before
    each handler. That sweep runs in the single thread that also stores agents' log batches,
    so every frame on every socket waited for the batch in progress; an agent's next batch
    could not even be read while its last one was being stored."""

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
