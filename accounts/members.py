"""Members, invitations and API clients of a tenant: what the dashboard's members and API
access pages do. Owners and admins call these (the views check the role first); the rules that
protect a tenant from its own admins (an admin cannot make or remove owners, the last owner
stays) live here so every caller gets them."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application

from accounts.models import Invitation, Membership, ServiceAccount, Tenant
from cloud.exceptions import ApplicationError, Conflict, InvalidInput, NotFound

User = get_user_model()
Role = Membership.Role


class RoleForbidden(ApplicationError):
    status = 403
    title = "Forbidden"
    code = "role_forbidden"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- reads ------------------------------------------------------------------------------------
def members_for(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("role", "user__username")


def invitations_pending_for(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True)


def service_accounts_for(*, tenant: Tenant) -> QuerySet[ServiceAccount]:
    return ServiceAccount.objects.filter(tenant=tenant).select_related("application").order_by("-created_at")


def active_tokens_for(*, tenant: Tenant) -> QuerySet[AccessToken]:
    """Unexpired tokens of the tenant's service accounts (user tokens act for whichever tenant
    their X-Tenant names, so they belong to the user, not to one tenant)."""
    return (AccessToken.objects.filter(application__service_account__tenant=tenant, expires__gt=timezone.now())
            .select_related("application").order_by("-created"))


# -- members ----------------------------------------------------------------------------------
def _guard_role(*, actor_role: str, role: str) -> None:
    if role not in Role.values:
        raise InvalidInput("role", f"role is one of {', '.join(Role.values)}.", code="invalid_choice")
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise RoleForbidden(f"Your role is '{actor_role}'; only an owner can make another owner.")


@transaction.atomic
def invitation_create(*, tenant: Tenant, actor, actor_role: str, email: str, role: str,
                      accept_url_for) -> Invitation:
    """Mails `email` a one-time link (accept_url_for(token) builds it on this server's host)."""
    _guard_role(actor_role=actor_role, role=role)
    email = User.objects.normalize_email(email).strip().lower()
    if "@" not in email:
        raise InvalidInput("email", "Give an email address.")
    if Membership.objects.filter(tenant=tenant, user__username=email).exists():
        raise Conflict(f"{email} is already a member of {tenant.slug}.")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(tenant=tenant, email=email, role=role, token_hash=_hash(token),
                                           invited_by=actor)
    url = accept_url_for(token)
    # Sent inside the transaction: if the mail cannot go, no invitation nobody can accept stays.
    send_mail(
        f"You are invited to {tenant.name} on Gantry",
        f"{actor.email or actor.username} invited you to join {tenant.name} ({tenant.slug}) as {role}.\n\n"
        f"Accept: {url}\n\nIf you have no Gantry account yet, sign up with this address first.",
        settings.DEFAULT_FROM_EMAIL, [email])
    return invitation


def invitation_for_token(*, token: str) -> Invitation:
    invitation = Invitation.objects.select_related("tenant").filter(token_hash=_hash(token or "")).first()
    if invitation is None or invitation.accepted_at is not None:
        raise NotFound("This invitation is unknown or was already used.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user) -> Membership:
    invitation = invitation_for_token(token=token)
    # The link may have been forwarded: only the invited address can use it.
    if (user.email or user.username).lower() != invitation.email:
        raise RoleForbidden(f"This invitation is for {invitation.email}; you are logged in as {user.username}.")
    claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True).update(accepted_at=timezone.now())
    if claimed != 1:
        raise NotFound("This invitation is unknown or was already used.")
    membership, _ = Membership.objects.get_or_create(user=user, tenant=invitation.tenant,
                                                     defaults={"role": invitation.role})
    return membership


@transaction.atomic
def invitation_revoke(*, tenant: Tenant, invitation_id: int) -> None:
    deleted, _ = Invitation.objects.filter(tenant=tenant, pk=invitation_id, accepted_at__isnull=True).delete()
    if not deleted:
        raise NotFound("No such invitation.")


@transaction.atomic
def membership_remove(*, tenant: Tenant, actor_role: str, membership_id: int) -> None:
    membership = Membership.objects.select_for_update().filter(tenant=tenant, pk=membership_id).first()
    if membership is None:
        raise NotFound("No such member.")
    if membership.role == Role.OWNER:
        if actor_role != Role.OWNER:
            raise RoleForbidden(f"Your role is '{actor_role}'; only an owner can remove an owner.")
        owners = Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER).count()
        if owners <= 1:
            raise Conflict("A tenant keeps at least one owner; make someone else owner first.")
    membership.delete()


# -- API clients ------------------------------------------------------------------------------
def client_scopes_valid(scopes: list[str]) -> list[str]:
    allowed = settings.CUSTOMER_SCOPES
    unknown = sorted(set(scopes) - set(allowed))
    if unknown:
        raise InvalidInput("scopes", f"Unknown scope {', '.join(unknown)}; choose from {', '.join(allowed)}.")
    if not scopes:
        raise InvalidInput("scopes", "Choose at least one scope.", code="required")
    return [scope for scope in allowed if scope in scopes]


@transaction.atomic
def service_account_revoke(*, tenant: Tenant, service_account_id: int) -> None:
    """Deleting the application deletes its tokens with it (DOT's foreign keys cascade), so
    a revoked client's token stops working at once."""
    account = ServiceAccount.objects.filter(tenant=tenant, pk=service_account_id).first()
    if account is None:
        raise NotFound("No such API client.")
    Application.objects.filter(pk=account.application_id).delete()
