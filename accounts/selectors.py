"""Reads about tenants and who may act for them."""

from __future__ import annotations

import re

from django.db.models import Exists, QuerySet
from django.utils import timezone
from oauth2_provider.models import AbstractApplication, AccessToken

from accounts.models import EmailConfirmation, Membership, ServiceAccount, Tenant
# Raised here; defined in the plumbing so cloud/auth.py and cloud/streams.py can catch it.
from cloud.tenancy import TenantForbidden  # noqa: F401 - callers import it from here too

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")


def memberships_for(*, user) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("tenant")


def email_confirmed(*, user) -> bool:
    """The account's current address was shown to be its owner's (accounts.models.EmailConfirmation);
    changing the address undoes it."""
    email = (user.email or user.username or "").lower()
    return bool(email) and EmailConfirmation.objects.filter(user=user, email__iexact=email).exists()


def personal_tenant_for(*, user) -> Tenant | None:
    membership = (
        memberships_for(user=user)
        .filter(tenant__personal=True, role=Membership.Role.OWNER)
        .order_by("created_at")
        .first()
    )
    return membership.tenant if membership else None


def tenant_by_slug(slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def tenant_by_id(tenant_id: int) -> Tenant:
    """Raises Tenant.DoesNotExist (an ObjectDoesNotExist) when there is none."""
    return Tenant.objects.get(pk=tenant_id)


def tenants_in_bulk(*, tenant_ids) -> dict[int, Tenant]:
    return Tenant.objects.in_bulk(list(tenant_ids))


def tenants_lock(*, tenant_ids) -> list[int]:
    """Locks the tenants' rows in id order (so two lockers never deadlock) until the caller's
    transaction ends: the lock the ledger, quota and funds checks serialise on. Returns the ids
    that exist."""
    return list(Tenant.objects.select_for_update().filter(pk__in=list(tenant_ids)).order_by("pk")
                .values_list("pk", flat=True))


def access_standing(*, tenant_id: int, user_id: int | None, token_id: int | None) -> dict[str, bool]:
    """Whether what an open stream was let in with still holds, in one indexed query:
    `token` (the bearer token exists and is unexpired) and `member` (the user is an active
    member of the tenant), each present only when asked for by a non-None id."""
    checks = {}
    if token_id is not None:
        checks["token"] = Exists(AccessToken.objects.filter(pk=token_id, expires__gt=timezone.now()))
    if user_id is not None:
        checks["member"] = Exists(Membership.objects.filter(tenant_id=tenant_id, user_id=user_id,
                                                            user__is_active=True))
    if not checks:
        return {}
    row = Tenant.objects.filter(pk=tenant_id).annotate(**checks).values(*checks).first()
    return row or {name: False for name in checks}


def tenant_for_request(*, user, token, tenant_slug: str | None) -> tuple[Tenant, str]:
    """The one tenant a request acts for, and the caller's role in it.

    A client-credentials token acts for its service account's tenant and nothing else. A user
    (token or session) acts for the tenant named by X-Tenant, else their personal one; naming a
    tenant they do not belong to is a 403 (the issue's rule: unlike objects, tenant slugs are
    not secret, and a clear "not a member" helps a user with several organisations).
    """
    application = getattr(token, "application", None)
    if application is not None and application.authorization_grant_type == AbstractApplication.GRANT_CLIENT_CREDENTIALS:
        account = ServiceAccount.objects.select_related("tenant").filter(application=application).first()
        if account is None:
            raise TenantForbidden("This client is not a service account of any tenant.")
        if tenant_slug and tenant_slug != account.tenant.slug:
            raise TenantForbidden(f"This client acts only for tenant '{account.tenant.slug}'.")
        return account.tenant, "service"

    if user is None or not user.is_authenticated:
        raise TenantForbidden("No user is bound to these credentials.")
    if tenant_slug:
        if not SLUG_RE.match(tenant_slug):
            # Nothing could match (and PostgreSQL refuses NUL bytes outright): same answer as
            # any tenant the caller is not in, never a driver error.
            raise TenantForbidden(f"You are not a member of tenant '{tenant_slug[:60]}'.")
        membership = memberships_for(user=user).filter(tenant__slug=tenant_slug).first()
        if membership is None:
            raise TenantForbidden(f"You are not a member of tenant '{tenant_slug}'.")
        return membership.tenant, membership.role
    membership = (
        memberships_for(user=user)
        .order_by("-tenant__personal", "created_at")
        .first()
    )
    if membership is None:
        raise TenantForbidden("Your account belongs to no tenant; ask an operator to add you to one.")
    return membership.tenant, membership.role


def owner_emails_for(*, tenant) -> list[str]:
    """Where a tenant's owners are written to (billing notices)."""
    return sorted({email for email in Membership.objects.filter(tenant=tenant, role=Membership.Role.OWNER)
                   .values_list("user__email", flat=True) if email})


# Added by the deployments/nodes split (issue 24): the quota and funds checks lock the tenant
# row through this instead of importing accounts.models.
def tenant_for_update(tenant_id) -> Tenant:
    """The tenant row locked (SELECT ... FOR UPDATE) for the caller's transaction, fresh from
    the database: requests that count against its quotas or balance queue behind each other."""
    return Tenant.objects.select_for_update().get(pk=tenant_id)
