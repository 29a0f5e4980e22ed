"""Which tenant a call acts for, as the plumbing asks it without importing an app.

`cloud/auth.py` (every REST call) and `cloud/streams.py` (SSE and WebSocket streams) need the
tenant a caller acts for and, while a stream is open, whether what let it in still holds. Both
answers are the accounts app's (its tables, its rules); plumbing imports no app, so accounts
registers its `TenantResolver` in `AppConfig.ready()`, as the deployments app registers its
`ReplicaSink` with `nodes.link`. A process where nothing registered fails on the first call
with a RuntimeError naming the cause, never by letting a call through without a tenant.
"""

from __future__ import annotations

from typing import Protocol

from cloud.exceptions import ApplicationError


class TenantForbidden(ApplicationError):
    """The caller may not act for the tenant it named (or for any)."""

    status = 403
    title = "Forbidden"
    code = "tenant_forbidden"


class TenantResolver(Protocol):
    def tenant_for_request(self, *, user, token, tenant_slug: str | None) -> tuple[object, str]:
        """The one tenant a request acts for, and the caller's role in it (or "service" for a
        service account's token); TenantForbidden when there is none it may act for."""

    def access_standing(self, *, tenant_id: int, user_id: int | None, token_id: int | None) -> dict[str, bool]:
        """`token`: the bearer token exists and is unexpired; `member`: the user is an active
        member of the tenant; each present only when asked for by a non-None id."""


_resolver: TenantResolver | None = None


def register(resolver: TenantResolver) -> None:
    global _resolver
    _resolver = resolver


def resolver() -> TenantResolver:
    if _resolver is None:
        raise RuntimeError("no TenantResolver registered with cloud.tenancy (is the accounts app installed?)")
    return _resolver


def tenant_for_request(*, user, token, tenant_slug: str | None) -> tuple[object, str]:
    return resolver().tenant_for_request(user=user, token=token, tenant_slug=tenant_slug)


def access_standing(*, tenant_id: int, user_id: int | None, token_id: int | None) -> dict[str, bool]:
    return resolver().access_standing(tenant_id=tenant_id, user_id=user_id, token_id=token_id)
