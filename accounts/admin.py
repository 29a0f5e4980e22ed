"""Tenants, members and service accounts in the admin. Nothing an `accounts` service guards is
written by a form: a tenant is made by `tenant_create` (the personal-slug rule, an owner with a
confirmed address, the trial credit) and changed by `tenant_update`; a membership is added,
re-roled and removed by the services that keep every tenant an owner. What a service refuses is
a form error or a message, never a 500 and never done.

The tenant's money (balance, ledger, spend limit) is billing's: billing's admin extends the
tenant page (`tenant_admin_replace`), so accounts imports nothing of billing.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts import members, services
from accounts.models import Membership, ServiceAccount, Tenant
from accounts.selectors import email_confirmed
from cloud.admin import ServiceDeleteMixin, service_dry_run


class TenantAddForm(forms.ModelForm):
    owner = forms.EmailField(help_text="the owner's login; their address must be confirmed")

    class Meta:
        model = Tenant
        fields = ["slug", "name"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        owner = get_user_model().objects.filter(username=data["owner"].strip().lower()).first()
        if owner is None or not email_confirmed(user=owner):
            # As `manage.py create_tenant`: anyone can sign up with someone else's address.
            raise forms.ValidationError({"owner": "No account with a confirmed address has this email."})
        data["owner_user"] = owner
        service_dry_run(self, lambda: services.tenant_create(slug=data["slug"], name=data.get("name"), owner=owner))
        return data


class TenantChangeForm(forms.ModelForm):
    """The fields `tenant_update` changes; an app that extends the page adds its own (billing:
    the spend limit) and its service call (`TenantAdmin.tenant_write`)."""

    class Meta:
        model = Tenant
        fields = ["name", "max_gpus", "max_deployments", "max_volume_gib"]

    tenant_write = None  # set by TenantAdmin.get_form: the service calls this form's data makes

    def clean(self):
        data = super().clean()
        if not self.errors:
            service_dry_run(self, lambda: self.tenant_write(Tenant.objects.get(pk=self.instance.pk), data))
        return data


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "personal", "max_gpus", "max_deployments", "created_at"]
    list_filter = ["personal"]
    search_fields = ["slug", "name", "memberships__user__email"]
    change_form = TenantChangeForm  # an extending app's subclass adds its fields
    extra_readonly: tuple[str, ...] = ()  # and its read-only rows (billing: balance, ledger)

    def get_readonly_fields(self, request, obj=None):
        # A slug is the tenant's name in every API call (X-Tenant), so it is chosen once.
        return ["slug", "personal", "created_at", "members", *self.extra_readonly] if obj is not None else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["slug", "name", "owner"]
        return ["slug", "personal", *self.get_form(request, obj).base_fields, *self.extra_readonly, "members",
                "created_at"]

    @admin.display(description="members")
    def members(self, obj: Tenant) -> str:
        """Each membership links to its own page, where its role is changed or it is removed
        (through the services that keep the tenant an owner)."""
        rows = format_html_join(
            mark_safe("<br>"), '<a href="{}">{}</a> ({})',
            ((reverse("admin:accounts_membership_change", args=[m.pk]), m.user, m.role)
             for m in Membership.objects.filter(tenant=obj).select_related("user").order_by("role", "user_id")))
        add = reverse("admin:accounts_membership_add") + f"?tenant={obj.pk}"
        return format_html('{}<br><a href="{}">add a member</a>', rows, add)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = TenantAddForm
            kwargs["fields"] = ["slug", "name"]
            return super().get_form(request, obj, change=change, **kwargs)
        kwargs.setdefault("form", self.change_form)
        kwargs["fields"] = list(kwargs["form"]._meta.fields)
        form = super().get_form(request, obj, change=change, **kwargs)
        form.tenant_write = lambda _form, tenant, data: self.tenant_write(request, tenant, data)
        return form

    def tenant_write(self, request, tenant: Tenant, data: dict) -> Tenant:
        """Every service call a change of the tenant page makes, in order."""
        return services.tenant_update(tenant=tenant, name=data["name"], max_gpus=data["max_gpus"],
                                      max_deployments=data["max_deployments"],
                                      max_volume_gib=data.get("max_volume_gib"))

    def save_model(self, request, obj, form, change):
        if change:
            self.tenant_write(request, Tenant.objects.get(pk=obj.pk), form.cleaned_data)
        else:
            made = services.tenant_create(slug=obj.slug, name=obj.name, owner=form.cleaned_data["owner_user"])
            obj.pk = made.pk


def tenant_admin_replace(admin_class: type[TenantAdmin]) -> None:
    """An app above accounts extends the tenant page with a subclass of TenantAdmin (billing: the
    balance, the ledger and the spend limit), without accounts importing it."""
    admin.site.unregister(Tenant)
    admin.site.register(Tenant, admin_class)


class MembershipAddForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["user", "tenant", "role"]


class MembershipChangeForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["role"]

    def clean(self):
        data = super().clean()
        if not self.errors:
            service_dry_run(self, lambda: services.membership_role_change(membership_id=self.instance.pk,
                                                                          role=data["role"]))
        return data


@admin.register(Membership)
class MembershipAdmin(ServiceDeleteMixin, admin.ModelAdmin):
    """A tenant keeps at least one owner: demoting or removing its last is refused here as in the
    dashboard (the same services)."""

    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "user__username", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = MembershipChangeForm if obj is not None else MembershipAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return ["user", "tenant", "created_at"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            services.membership_role_change(membership_id=obj.pk, role=form.cleaned_data["role"])
        else:
            obj.pk = services.membership_add(tenant=obj.tenant, user=obj.user, role=obj.role).pk

    def delete_through_service(self, request, obj) -> None:
        # The operator acts with an owner's rights: only the last-owner rule holds them back.
        members.membership_remove(tenant=obj.tenant, actor_role=Membership.Role.OWNER, membership_id=obj.pk)


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
