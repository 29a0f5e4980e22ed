"""Who is calling, with which scopes, for which tenant, and how fast.

Authentication is DOT's bearer tokens first (so an anonymous call gets 401 with
`WWW-Authenticate: Bearer`), then Django sessions for the dashboard and the browsable docs.
`ScopedTenantPermission` runs on every API view: it checks the token's scopes against what the
view declares for the method, and pins `request.tenant` for everything after it.
"""

from __future__ import annotations

from oauth2_provider.models import AccessToken
from rest_framework import authentication, exceptions, permissions, throttling

from cloud.tenancy import tenant_for_request

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's, unchanged but for the name: kept here so the whole auth stack reads in one file."""


def required_scopes_for(view, method: str) -> list[str]:
    """A view declares `read_scopes` and `write_scopes` (or `required_scopes` for all methods)."""
    if getattr(view, "required_scopes", None) is not None:
        return list(view.required_scopes)
    if method.upper() in READ_METHODS:
        return list(getattr(view, "read_scopes", []))
    return list(getattr(view, "write_scopes", []))


class ScopedTenantPermission(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        token = request.auth if isinstance(request.auth, AccessToken) else None
        user = request.user
        if token is None and not (user is not None and user.is_authenticated):
            raise exceptions.NotAuthenticated("Send an OAuth2 bearer token (see /o/token/).")

        scopes = required_scopes_for(view, request.method)
        if token is not None:
            missing = [s for s in scopes if not token.allow_scopes([s])]
            if missing:
                raise exceptions.PermissionDenied(f"This token lacks the scope(s): {', '.join(missing)}.")
        elif "nodes:admin" in scopes and not user.is_staff:
            raise exceptions.PermissionDenied("Operators only.")

        if getattr(view, "tenant_required", True):
            request.tenant, request.tenant_role = tenant_for_request(
                user=user, token=token, tenant_slug=request.headers.get("X-Tenant") or None
            )
        return True


class TokenRateThrottle(throttling.SimpleRateThrottle):
    """Per token (or per session user, else per address), in the shared Redis cache so every
    web process counts together."""

    scope = "token"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, AccessToken):
            ident = f"tok:{request.auth.pk}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
