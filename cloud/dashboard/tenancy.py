"""Which tenant a dashboard page acts for, and whether the caller's role may do what it asks.

The tenant is the session's choice (the switcher in the header), falling back to the one the
API would pick (personal first), through the same selector the API uses. A role check that
fails is a 403 naming the role: the user can see the tenant, so hiding it would only confuse.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from accounts.selectors import TenantForbidden, memberships_for, tenant_for_request
from protocol.vocabulary import MANAGER_ROLES

SESSION_KEY = "dashboard_tenant"


def current_tenant(request):
    slug = request.session.get(SESSION_KEY)
    try:
        return tenant_for_request(user=request.user, token=None, tenant_slug=slug)
    except TenantForbidden:
        if slug is None:
            raise
        # Removed from that tenant since it was chosen: fall back rather than lock them out.
        request.session.pop(SESSION_KEY, None)
        return tenant_for_request(user=request.user, token=None, tenant_slug=None)


def tenant_view(*, manage: bool = False):
    """Log-in required; sets request.tenant and request.tenant_role. `manage`: owner or admin only."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            try:
                request.tenant, request.tenant_role = current_tenant(request)
            except TenantForbidden as exc:
                return render(request, "dashboard/forbidden.html", {"detail": exc.detail}, status=403)
            if manage and request.tenant_role not in MANAGER_ROLES:
                detail = (f"Your role in {request.tenant.slug} is '{request.tenant_role}'; "
                          "only an owner or admin can do this.")
                return render(request, "dashboard/forbidden.html", {"detail": detail}, status=403)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def nav_context(request) -> dict:
    """Context processor: the header's tenant switcher."""
    tenant = getattr(request, "tenant", None)
    if tenant is None or not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {
        "current_tenant": tenant,
        "current_role": request.tenant_role,
        "can_manage": request.tenant_role in MANAGER_ROLES,
        "my_memberships": list(memberships_for(user=request.user).order_by("-tenant__personal", "tenant__slug")),
    }
