"""Tenants (organisations), who belongs to them, and which OAuth2 clients act for them."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from protocol.vocabulary import ROLES, choices

slug_validator = RegexValidator(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", "lowercase letters, digits and dashes")


def default_max_gpus() -> int:
    return settings.TENANT_DEFAULT_MAX_GPUS


def default_max_deployments() -> int:
    return settings.TENANT_DEFAULT_MAX_DEPLOYMENTS


def default_max_volume_gib() -> int:
    return settings.TENANT_DEFAULT_MAX_VOLUME_GIB


def default_balance() -> Decimal:
    # Referenced by migration 0001 (the balance field it made is now the ledger's, billing app).
    return Decimal(settings.TENANT_DEFAULT_BALANCE)


class Tenant(models.Model):
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    # A personal tenant is made at signup for one user; organisations are made by operators.
    personal = models.BooleanField(default=False)
    max_gpus = models.PositiveIntegerField(default=default_max_gpus, help_text="GPUs in use at once, all deployments")
    max_deployments = models.PositiveIntegerField(default=default_max_deployments, help_text="deployments not deleted")
    max_volume_gib = models.PositiveIntegerField(default=default_max_volume_gib,
                                                 help_text="GiB of volumes provisioned at once, all not deleted")
    spend_limit = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))],
        help_text="monthly spend cap in USD; empty for none (the balance is the billing ledger's sum)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    Role = models.TextChoices("Role", choices(ROLES), qualname="Membership.Role")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")]
        ordering = ["tenant__slug", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class ServiceAccount(models.Model):
    """An OAuth2 client-credentials application that acts for one tenant.

    A separate row rather than a swapped Application model: django-oauth-toolkit's swappable
    models must be chosen before its first migration and complicate every upgrade; a one-to-one
    side table costs one join on token lookup, which DOT already does.
    """

    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.CASCADE, related_name="service_account"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="service_accounts")
    # Space-separated scopes this client may be granted; empty means all customer scopes.
    scopes = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.application.name} → {self.tenant}"


class Invitation(models.Model):
    """An owner or admin asked `email` to join `tenant` as `role`. The link's token is mailed
    once and only its SHA-256 is stored, so a database read cannot accept an invitation."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant} ({self.role})"


class EmailConfirmation(models.Model):
    """`user` showed that `email` is theirs: they followed a link mailed to it, or an operator
    vouched for it (an account `create_tenant` made). Anyone can sign up with someone else's
    address, so until this row exists, for the address the account has now, the account gets no
    trial credit and no tenant from an operator."""

    class How(models.TextChoices):
        LINK = "link"
        OPERATOR = "operator"
        BEFORE = "before", "confirmed before this table (trial credit, staff)"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_confirmation")
    email = models.EmailField(max_length=254)
    how = models.CharField(max_length=10, choices=How.choices)
    confirmed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.email} ({self.how})"
