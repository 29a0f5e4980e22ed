"""Writes about tenants, members and service accounts."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify
from oauth2_provider.models import Application

from accounts import signals
from accounts.models import EmailConfirmation, Membership, ServiceAccount, Tenant
from accounts.selectors import email_confirmed
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


def email_mark_confirmed(*, user, how: str) -> None:
    """`how`: EmailConfirmation.How (the mailed link, or an operator vouching for the address)."""
    email = (user.email or user.username).lower()
    EmailConfirmation.objects.update_or_create(user=user, defaults={"email": email, "how": how})


@transaction.atomic
def tenant_create(*, slug: str, name: str | None = None, owner, personal: bool = False,
                  trial: bool = True) -> Tenant:
    """`trial`: the tenant is due the trial credit (billing grants it on `signals.tenant_created`,
    in this transaction) if the owner's email is confirmed; an owner who confirms later gets it on
    their personal tenant then (accounts/confirmation.py). Whatever path made the tenant, an
    unconfirmed address mints no free GPU time."""
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
    signals.tenant_created.send(sender=Tenant, tenant=tenant, owner=owner,
                                trial=trial and email_confirmed(user=owner))
    return tenant


def _tenant_fields_set(tenant, changes: dict) -> tuple[Tenant, bool]:
    """Writes `changes` to the tenant's row under its lock (the lock quota, funds and ledger
    checks hold, so none of them reads half a change). Returns the row and whether it changed."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    changed = [field for field, value in changes.items() if getattr(locked, field) != value]
    for field in changed:
        setattr(locked, field, changes[field])
    if changed:
        locked.save(update_fields=changed)
    return locked, bool(changed)


@transaction.atomic
def tenant_update(*, tenant, name: str | None = None, max_gpus: int | None = None,
                  max_deployments: int | None = None, max_volume_gib: int | None = None) -> Tenant:
    """What an operator may change on a tenant: its display name and its quotas. A lowered quota
    stops nothing that runs; it refuses what would pass it from now on."""
    changes = {}
    if name is not None:
        if not name.strip():
            raise InvalidInput("name", "A tenant has a name.", code="required")
        changes["name"] = name.strip()[:200]
    for field, value in (("max_gpus", max_gpus), ("max_deployments", max_deployments),
                         ("max_volume_gib", max_volume_gib)):
        if value is not None:
            if value < 0:
                raise InvalidInput(field, f"{field} is zero or more.", code="min_value")
            changes[field] = value
    tenant, _ = _tenant_fields_set(tenant, changes)
    return tenant


@transaction.atomic
def tenant_spend_limit_store(*, tenant, limit) -> tuple[Tenant, bool]:
    """Stores the monthly spend limit on the tenant's row (DESIGN keeps it there). Billing owns
    its rules and is the only caller (`billing.services.spend_limit_set`)."""
    return _tenant_fields_set(tenant, {"spend_limit": limit})


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
def membership_role_change(*, membership_id: int, role: str) -> Membership:
    """An operator's change of a member's role. The tenant keeps at least one owner, as when a
    member is removed (accounts.members.membership_remove): demoting the last is refused."""
    if role not in Membership.Role.values:
        raise InvalidInput("role", f"role is one of {', '.join(Membership.Role.values)}.", code="invalid_choice")
    membership = Membership.objects.select_for_update().get(pk=membership_id)
    if membership.role == role:
        return membership
    if membership.role == Membership.Role.OWNER:
        owners = Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id,
                                                               role=Membership.Role.OWNER).count()
        if owners <= 1:
            raise Conflict("A tenant keeps at least one owner; make someone else owner first.",
                           errors=[{"field": "role", "message": "the tenant's last owner", "code": "last_owner"}])
    membership.role = role
    membership.save(update_fields=["role"])
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
