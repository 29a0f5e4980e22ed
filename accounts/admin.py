from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import Membership, ServiceAccount, Tenant
from billing.selectors import balance_expression


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """The balance is the billing ledger's sum: shown here, changed only by adding a ledger
    entry (credit, refund, correction) with who and why. A tenant with metered usage or a
    ledger cannot be deleted (PROTECT)."""

    list_display = ["slug", "name", "personal", "max_gpus", "max_deployments", "balance", "spend_limit", "created_at"]
    list_filter = ["personal"]
    search_fields = ["slug", "name", "memberships__user__email"]
    readonly_fields = ["balance", "ledger"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_balance=balance_expression(tenant_ref="pk"))

    @admin.display(description="balance (USD)", ordering="_balance")
    def balance(self, obj: Tenant):
        return getattr(obj, "_balance", None) if obj.pk else None

    @admin.display(description="ledger")
    def ledger(self, obj: Tenant) -> str:
        if not obj.pk:
            return "-"
        entries = reverse("admin:billing_ledgerentry_changelist") + f"?tenant__id__exact={obj.pk}"
        add = reverse("admin:billing_ledgerentry_add") + f"?tenant={obj.pk}"
        return format_html('<a href="{}">ledger entries</a> · <a href="{}">add a credit or refund</a>', entries, add)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "user__username", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    list_display = ["application", "tenant", "scopes", "created_at"]
    search_fields = ["application__name", "application__client_id", "tenant__slug"]
    autocomplete_fields = ["tenant"]
    # The client secret lives hashed in DOT's Application; nothing here can show it.
    readonly_fields = ["application"]


# -- django-oauth-toolkit's models, re-registered ------------------------------------------------
# DOT's own admin lists and searches tokens and codes in full: anyone who can open an admin page
# could copy a customer's live token. Here a token is a prefix (enough to match it against a log
# line) and is never searchable; staff revoke by deleting. Clients (Applications) keep DOT's
# admin but its form goes through Application.clean, which holds Gantry's client rules
# (accounts/oauth.py).
from oauth2_provider import admin as dot_admin  # noqa: E402  (registers DOT's classes first)
from oauth2_provider.models import (  # noqa: E402
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)

from accounts.oauth import token_prefix  # noqa: E402

AccessToken, RefreshToken, Grant = get_access_token_model(), get_refresh_token_model(), get_grant_model()


class SecretRowAdmin(admin.ModelAdmin):
    """Read-only rows whose secret column shows as a prefix; no add, no edit, delete revokes."""

    secret_field = "token"
    search_fields = ["user__email", "user__username", "application__name", "application__client_id"]
    list_filter = ["application"]
    list_select_related = ["application", "user"]

    def get_fields(self, request, obj=None):
        names = [f.name for f in self.model._meta.fields if f.name not in {self.secret_field, "token_checksum", "id"}]
        return ["secret_prefix", *names]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="prefix")
    def secret_prefix(self, obj) -> str:
        return token_prefix(getattr(obj, self.secret_field)) or "-"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AccessTokenAdmin(SecretRowAdmin):
    list_display = ["secret_prefix", "user", "application", "scope", "expires", "created"]


class RefreshTokenAdmin(SecretRowAdmin):
    list_display = ["secret_prefix", "user", "application", "revoked", "created"]


class GrantAdmin(SecretRowAdmin):
    secret_field = "code"
    list_display = ["secret_prefix", "user", "application", "expires"]


class ApplicationAdmin(dot_admin.ApplicationAdmin):
    view_on_site = False  # DOT's get_absolute_url names the management pages Gantry does not mount


for _model, _admin in ((AccessToken, AccessTokenAdmin), (RefreshToken, RefreshTokenAdmin), (Grant, GrantAdmin),
                       (get_application_model(), ApplicationAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)
# ID tokens (OIDC, off) carry no secret beyond their JTI; DOT's admin for them stays.
