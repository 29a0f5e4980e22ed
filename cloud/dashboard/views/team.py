"""Members, invitations and API clients: owners and admins manage, members get a 403 that
names their role (cloud/dashboard/tenancy.py)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import members as team
from accounts.services import service_account_create
from cloud.dashboard.tenancy import SESSION_KEY, tenant_view
from cloud.exceptions import ApplicationError, NotFound
from protocol.vocabulary import MANAGER_ROLES, MEMBER, ROLES


def _say(request, exc: ApplicationError) -> None:
    messages.error(request, exc.detail)


@tenant_view()
def members(request):
    if request.method == "POST":
        if request.tenant_role not in MANAGER_ROLES:
            return render(request, "dashboard/forbidden.html", status=403, context={
                "detail": f"Your role in {request.tenant.slug} is '{request.tenant_role}'; only an owner or admin "
                          "can invite members."})
        try:
            team.invitation_create(
                tenant=request.tenant, actor=request.user, actor_role=request.tenant_role,
                email=request.POST.get("email", ""), role=request.POST.get("role", MEMBER),
                accept_url_for=lambda token: request.build_absolute_uri(reverse("dashboard:invitation", args=[token])))
            messages.success(request, f"Invitation sent to {request.POST.get('email')}.")
        except ApplicationError as exc:
            _say(request, exc)
        return redirect("dashboard:members")
    return render(request, "dashboard/members.html", {
        "members": team.members_for(tenant=request.tenant),
        "invitations": team.invitations_pending_for(tenant=request.tenant),
        "roles": list(ROLES),
    })


@require_POST
@tenant_view(manage=True)
def member_remove(request, membership_id):
    try:
        team.membership_remove(tenant=request.tenant, actor_role=request.tenant_role, membership_id=membership_id)
        messages.success(request, "Member removed.")
    except ApplicationError as exc:
        _say(request, exc)
    return redirect("dashboard:members")


@require_POST
@tenant_view(manage=True)
def invitation_revoke(request, invitation_id):
    try:
        team.invitation_revoke(tenant=request.tenant, invitation_id=invitation_id)
        messages.success(request, "Invitation withdrawn.")
    except ApplicationError as exc:
        _say(request, exc)
    return redirect("dashboard:members")


def invitation(request, token):
    """The mailed link. Logged out: log in (or sign up) first and come back here."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        pending = team.invitation_for_token(token=token)
    except NotFound:
        raise Http404 from None
    if request.method == "POST":
        try:
            membership = team.invitation_accept(token=token, user=request.user)
        except ApplicationError as exc:
            return render(request, "dashboard/forbidden.html", {"detail": exc.detail}, status=exc.status)
        request.session[SESSION_KEY] = membership.tenant.slug
        messages.success(request, f"You joined {membership.tenant.name} as {membership.role}.")
        return redirect("dashboard:deployments")
    return render(request, "dashboard/invitation.html", {"invitation": pending})


@never_cache  # the page that shows a new secret must not sit in any cache
@tenant_view(manage=True)
def api_access(request):
    created = None
    if request.method == "POST":
        try:
            scopes = team.client_scopes_valid(request.POST.getlist("scopes"))
            name = request.POST.get("name", "").strip()
            if not name:
                raise ApplicationError("Give the client a name, e.g. ci or training-scripts.")
            application, secret = service_account_create(tenant=request.tenant, name=name[:200], scopes=scopes)
            created = {"client_id": application.client_id, "secret": secret, "name": application.name}
        except ApplicationError as exc:
            _say(request, exc)
    base = request.build_absolute_uri("/").rstrip("/")
    return render(request, "dashboard/api_access.html", {
        "created": created, "clients": team.service_accounts_for(tenant=request.tenant),
        "tokens": team.active_tokens_for(tenant=request.tenant), "scopes": settings.SCOPES,
        "customer_scopes": settings.CUSTOMER_SCOPES, "base": base,
    })


@require_POST
@tenant_view(manage=True)
def api_client_revoke(request, service_account_id):
    try:
        team.service_account_revoke(tenant=request.tenant, service_account_id=service_account_id)
        messages.success(request, "API client revoked; its tokens no longer work.")
    except ApplicationError as exc:
        _say(request, exc)
    return redirect("dashboard:api-access")
