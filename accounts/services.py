"""Writes about tenants, members and service accounts."""

from __future__ import annotations

import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.text import slugify
from oauth2_provider.models import Application

from accounts.models import Membership, ServiceAccount, Tenant
from billing.services import ledger_credit
from cloud.exceptions import Conflict, InvalidInput

User = get_user_model()


def _free_slug(base: str) -> str:
    base = (slugify(base) or "tenant")[:40].strip("-") or "tenant"
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def tenant_create(*, slug: str, name: str | None = None, owner, personal: bool = False) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"A tenant with slug '{slug}' already exists.")
    tenant = Tenant(slug=slug, name=name or slug, personal=personal)
    try:
        tenant.full_clean()
    except Exception as exc:
        raise InvalidInput("slug", f"'{slug}' is not a valid tenant slug (lowercase letters, digits, dashes).") from exc
    tenant.save()
    Membership.objects.create(user=owner, tenant=tenant, role=Membership.Role.OWNER)
    trial = Decimal(settings.TENANT_DEFAULT_BALANCE)
    if trial > 0:
        # The trial credit is the tenant's first ledger entry (its balance is its ledger's sum).
        ledger_credit(tenant=tenant, amount=trial, reason="trial credit for a new tenant", actor_name="system:trial",
                      key="trial")
    return tenant


@transaction.atomic
def user_signup(*, email: str, password: str | None) -> tuple[User, Tenant]:
    """A new user always gets a personal tenant, so their first API call has one to act for."""
    email = User.objects.normalize_email(email).lower()
    if User.objects.filter(username=email).exists():
        raise Conflict(f"A user with email '{email}' already exists.")
    user = User.objects.create_user(username=email, email=email, password=password)
    tenant = tenant_create(slug=_free_slug(email.split("@")[0]), name=f"{email} (personal)", owner=user, personal=True)
    return user, tenant


@transaction.atomic
def membership_add(*, tenant: Tenant, user, role: str = Membership.Role.MEMBER) -> Membership:
    membership, _ = Membership.objects.update_or_create(user=user, tenant=tenant, defaults={"role": role})
    return membership


@transaction.atomic
def service_account_create(*, tenant: Tenant, name: str, scopes: list[str] | None = None) -> tuple[Application, str]:
    """A confidential client-credentials client acting for `tenant`. Returns the plaintext
    secret once: DOT stores only its hash (CLIENT_SECRET_HASHED is on by default in DOT 2+)."""
    secret = secrets.token_urlsafe(32)
    application = Application.objects.create(
        name=name,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
        user=None,
        # DOT has no per-client scope list; the allowed scopes ride on the service account.
    )
    ServiceAccount.objects.create(application=application, tenant=tenant, scopes=" ".join(scopes or []))
    return application, secret
