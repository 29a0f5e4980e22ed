"""Writes about tenants, members and service accounts."""

from __future__ import annotations

import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify
from oauth2_provider.models import Application

from accounts.models import EmailConfirmation, Membership, ServiceAccount, Tenant
from accounts.selectors import email_confirmed
from billing.services import ledger_credit
from cloud.exceptions import Conflict, InvalidInput

User = get_user_model()


# Personal tenants' slugs are of their own kind, "u-<name>": an organisation slug never starts
# so, so a signup as acme@example.com can never take "acme" from the operator who will create it.
PERSONAL_PREFIX = "u-"


def _free_slug(base: str, *, prefix: str = "") -> str:
    base = prefix + ((slugify(base) or "tenant")[:40].strip("-") or "tenant")
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _grant_trial(tenant: Tenant) -> None:
    trial = Decimal(settings.TENANT_DEFAULT_BALANCE)
    if trial > 0:
        # The trial credit is the tenant's first ledger entry (its balance is its ledger's sum);
        # the key makes a second grant (a confirmation link clicked twice) the same entry.
        ledger_credit(tenant=tenant, amount=trial, reason="trial credit for a new tenant", actor_name="system:trial",
                      key="trial")


def email_mark_confirmed(*, user, how: str) -> None:
    """`how`: EmailConfirmation.How (the mailed link, or an operator vouching for the address)."""
    email = (user.email or user.username).lower()
    EmailConfirmation.objects.update_or_create(user=user, defaults={"email": email, "how": how})


@transaction.atomic
def tenant_create(*, slug: str, name: str | None = None, owner, personal: bool = False,
                  trial: bool = True) -> Tenant:
    """`trial`: grant the trial credit, if the owner's email is confirmed; an owner who confirms
    later gets it on their personal tenant then (accounts/confirmation.py). Whatever path made
    the tenant, an unconfirmed address mints no free GPU time."""
    if not personal and slug.startswith(PERSONAL_PREFIX):
        raise InvalidInput("slug", f"Slugs starting with '{PERSONAL_PREFIX}' are for personal tenants.")
    existing = Tenant.objects.select_for_update().filter(slug=slug).first()
    if existing is not None and existing.personal and not personal:
        # A personal tenant from before personal slugs had their own kind holds the name an
        # operator now wants: the operator's choice wins, the personal tenant moves aside.
        existing.slug = _free_slug(existing.slug, prefix=PERSONAL_PREFIX)
        existing.save(update_fields=["slug"])
    elif existing is not None:
        raise Conflict(f"A tenant with slug '{slug}' already exists.")
    tenant = Tenant(slug=slug, name=name or slug, personal=personal)
    try:
        tenant.full_clean()
    except Exception as exc:
        raise InvalidInput("slug", f"'{slug}' is not a valid tenant slug (lowercase letters, digits, dashes).") from exc
    tenant.save()
    Membership.objects.create(user=owner, tenant=tenant, role=Membership.Role.OWNER)
    if trial and email_confirmed(user=owner):
        _grant_trial(tenant)
    return tenant


@transaction.atomic
def user_signup(*, email: str, password: str | None, self_service: bool = False) -> tuple[User, Tenant]:
    """A new user always gets a personal tenant, so their first API call has one to act for.

    `self_service` (the web signup): the address is unconfirmed and the trial credit waits until
    it is (accounts/confirmation.py), so a throwaway or someone else's address mints nothing.
    An account an operator makes (create_tenant) is vouched for: confirmed, with its trial."""
    email = User.objects.normalize_email(email).lower()
    if User.objects.filter(username=email).exists():
        raise Conflict(f"A user with email '{email}' already exists.")
    user = User.objects.create_user(username=email, email=email, password=password)
    if not self_service:
        email_mark_confirmed(user=user, how=EmailConfirmation.How.OPERATOR)
    tenant = tenant_create(slug=_free_slug(email.split("@")[0], prefix=PERSONAL_PREFIX), name=f"{email} (personal)",
                           owner=user, personal=True, trial=not self_service)
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
    application = Application(
        name=name,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
        user=None,
        # DOT has no per-client scope list; the allowed scopes ride on the service account.
    )
    try:
        # Application.clean holds Gantry's client rules too (accounts/oauth.py: redirect URIs,
        # no password grant), so every client made here passes them.
        application.full_clean()
    except ValidationError as exc:
        raise InvalidInput("name", "; ".join(exc.messages)) from None
    application.save()
    ServiceAccount.objects.create(application=application, tenant=tenant, scopes=" ".join(scopes or []))
    return application, secret
