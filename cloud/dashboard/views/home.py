"""The landing page and the tenant switcher."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.selectors import memberships_for
from cloud.dashboard.tenancy import SESSION_KEY


def landing(request):
    if request.user.is_authenticated:
        return redirect("dashboard:deployments")
    return render(request, "dashboard/landing.html")


@require_POST
def switch_tenant(request):
    if not request.user.is_authenticated:
        return redirect("accounts:login")
    slug = request.POST.get("tenant", "")
    # Only a tenant the user belongs to is remembered; anything else is ignored, not an error page.
    if memberships_for(user=request.user).filter(tenant__slug=slug).exists():
        request.session[SESSION_KEY] = slug
    return redirect("dashboard:deployments")
