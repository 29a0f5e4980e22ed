"""Billing in the admin. Nothing money-related is edited in place: prices and ledger entries are
added through the same services the rest of the plane uses (`price_set`, `ledger_credit`),
with who and why; a tenant's spend limit is set through `spend_limit_set` (which starts or ends
a funds grace period); usage records, meters, runs and notices are read-only history."""

from __future__ import annotations

from datetime import date, timedelta

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.admin import TenantAdmin, TenantChangeForm, tenant_admin_replace
from billing import services
from billing.models import FundsNotice, LedgerEntry, MeterRun, Price, UsageDaily, UsageRecord, VolumePrice
from billing.money import HOURS_PER_MONTH
from billing.prices import PriceBook
from billing.reports import billing_report
from billing.selectors import balance_expression
from cloud.admin import ReadOnlyAdminMixin, service_dry_run
from nodes.selectors import locations_list


class PriceChangeForm(forms.ModelForm):
    """A new price row: from now unless said otherwise; `clean` asks the service dry."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["effective_from"].initial = timezone.now().replace(microsecond=0)


class PriceChangeAdmin(admin.ModelAdmin):
    """A price book: a change is a new row from now or later (added through the service);
    rows in effect are history and stay; one scheduled for later may be deleted before it
    takes effect."""

    date_hierarchy = "effective_from"

    @admin.display(boolean=True, description="in effect")
    def in_effect(self, obj) -> bool:
        return obj.effective_from <= timezone.now()

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return obj is not None and obj.effective_from > timezone.now()


class PriceForm(PriceChangeForm):
    class Meta:
        model = Price
        fields = ["hardware_type", "location", "price_per_unit_hour", "effective_from", "reason"]

    def clean(self):
        data = super().clean()
        if not self.errors:
            service_dry_run(self, lambda: services.price_set(
                hardware_type=data["hardware_type"], location=data.get("location"), price=data["price_per_unit_hour"],
                effective_from=data["effective_from"]))
        return data


@admin.register(Price)
class PriceAdmin(PriceChangeAdmin):
    """The hardware price book."""

    form = PriceForm
    list_display = ["hardware_type", "location", "price_per_unit_hour", "effective_from", "in_effect", "created_by",
                    "reason"]
    list_filter = ["hardware_type", "location"]
    search_fields = ["hardware_type__slug", "location__slug", "reason"]
    list_select_related = ["hardware_type", "location", "created_by"]

    def save_model(self, request, obj, form, change):
        entry = services.price_set(hardware_type=obj.hardware_type, location=obj.location, price=obj.price_per_unit_hour,
                                   effective_from=obj.effective_from, actor=request.user, reason=obj.reason)
        obj.pk = entry.pk


class VolumePriceForm(PriceChangeForm):
    class Meta:
        model = VolumePrice
        fields = ["location", "price_per_gib_month", "effective_from", "reason"]

    def clean(self):
        data = super().clean()
        if not self.errors:
            service_dry_run(self, lambda: services.volume_price_set(
                location=data.get("location"), price=data["price_per_gib_month"], effective_from=data["effective_from"]))
        return data


@admin.register(VolumePrice)
class VolumePriceAdmin(PriceChangeAdmin):
    """The volumes' price book: USD per provisioned GiB-month per location (a row without a
    location is every location without its own; with no row at all, VOLUME_PRICE_PER_GIB_MONTH).
    Same rules as the hardware prices: a change is a new row from now or later."""

    form = VolumePriceForm
    list_display = ["location_or_every", "price_per_gib_month", "per_gib_hour", "effective_from", "in_effect",
                    "created_by", "reason"]
    list_filter = ["location"]
    search_fields = ["location__slug", "reason"]
    list_select_related = ["location", "created_by"]

    @admin.display(description="location", ordering="location__slug")
    def location_or_every(self, obj: VolumePrice) -> str:
        return obj.location.slug if obj.location_id else "every location"

    @admin.display(description="per GiB-hour")
    def per_gib_hour(self, obj: VolumePrice) -> str:
        return f"{obj.price_per_gib_month / HOURS_PER_MONTH:.10f}"

    def changelist_view(self, request, extra_context=None):
        # What a GiB-month costs now in each location, whether from a row or the default.
        now = timezone.now()
        book = PriceBook.load(hardware_type_ids=set(), volumes=True)
        current = [(location.slug, book.volume_at(location_id=location.pk, at=now))
                   for location in locations_list().order_by("slug")]
        self.message_user(request, "Now, per GiB-month: " + (", ".join(f"{slug} {price:.4f} USD" for slug, price in current)
                                                            or f"{book.volume_at(location_id=None, at=now):.4f} USD "
                                                               "everywhere"), messages.INFO)
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change):
        entry = services.volume_price_set(location=obj.location, price=obj.price_per_gib_month,
                                          effective_from=obj.effective_from, actor=request.user, reason=obj.reason)
        obj.pk = entry.pk


class LedgerEntryForm(forms.ModelForm):
    kind = forms.ChoiceField(choices=[("credit", "credit"), ("refund", "refund"), ("charge", "correction (a charge)")])

    class Meta:
        model = LedgerEntry
        fields = ["tenant", "kind", "amount", "reason", "idempotency_key"]
        help_texts = {"amount": "USD, positive (a correction is taken off the balance)",
                      "idempotency_key": "optional: a second entry with the same key is refused"}

    def clean(self):
        data = super().clean()
        if not self.errors:
            service_dry_run(self, lambda: services.ledger_credit(
                tenant=data["tenant"], amount=data["amount"], kind=data["kind"], reason=data.get("reason") or "",
                key=data.get("idempotency_key") or None))
        return data


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Each tenant's ledger (filter by tenant, or follow the link on the tenant's page). Entries
    are added, never changed: a credit, a refund or a correction, each with who and why."""

    form = LedgerEntryForm
    list_display = ["tenant", "seq", "kind", "amount", "balance_after", "actor_name", "reason", "created_at"]
    list_filter = ["kind", ("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["tenant__slug", "reason", "actor_name", "idempotency_key"]
    list_select_related = ["tenant"]
    raw_id_fields = ["tenant"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # the ledger is long: a charge per usage record

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("kind", "credit")
        return initial

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        entry, created = services.ledger_credit(
            tenant=obj.tenant, amount=obj.amount, kind=form.cleaned_data["kind"], reason=obj.reason, actor=request.user,
            key=obj.idempotency_key or None)
        obj.pk = entry.pk
        if not created:
            self.message_user(request, f"Key '{obj.idempotency_key}' was already used: entry {entry.seq} stands.",
                              messages.WARNING)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written only by the metering task."""

    list_display = ["period_start", "period_end", "seconds", "tenant", "deployment", "replica", "volume",
                    "hardware_type", "location", "gpus", "units", "price_per_unit_hour", "price_per_gib_month", "amount"]
    list_filter = ["hardware_type", "location"]
    search_fields = ["tenant__slug", "deployment__name"]
    list_select_related = ["tenant", "deployment", "replica", "replica__deployment", "volume", "hardware_type",
                           "location"]
    date_hierarchy = "period_start"
    show_full_result_count = False


@admin.register(MeterRun)
class MeterRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["now", "finished_at", "meters", "records", "amount", "duration_ms"]


@admin.register(FundsNotice)
class FundsNoticeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["tenant", "kind", "cause", "opened_at", "stop_at", "closed_at", "outcome", "message"]
    list_filter = ["kind", "outcome"]
    search_fields = ["tenant__slug", "message"]
    list_select_related = ["tenant"]


class BillingReport(UsageDaily):
    class Meta:
        proxy = True
        verbose_name = "billing report"
        verbose_name_plural = "billing report"


@admin.register(BillingReport)
class BillingReportAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Revenue by day, GPU-hours sold by hardware type, utilisation per location (?days=N)."""

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def changelist_view(self, request, extra_context=None):
        try:
            days = max(1, min(int(request.GET.get("days", 30)), 366))
        except ValueError:
            days = 30
        last = timezone.now().date()
        first = last - timedelta(days=days - 1)
        context = {**self.admin_site.each_context(request), "title": f"Billing report: last {days} days",
                   "opts": self.model._meta, "report": billing_report(first=first, last=last),
                   "choices": [7, 30, 90, 365], "days": days, "today": date.today()}
        return TemplateResponse(request, "admin/billing/report.html", context)


# -- the tenant's page: its money -----------------------------------------------------------------
class TenantBillingForm(TenantChangeForm):
    class Meta(TenantChangeForm.Meta):
        fields = [*TenantChangeForm.Meta.fields, "spend_limit"]


class TenantBillingAdmin(TenantAdmin):
    """The tenant's page with its money: the balance is the ledger's sum, shown here and changed
    only by adding a ledger entry (credit, refund, correction) with who and why; the spend limit
    goes through billing's service. A tenant with metered usage or a ledger cannot be deleted
    (PROTECT)."""

    list_display = [*TenantAdmin.list_display[:-1], "balance", "spend_limit", TenantAdmin.list_display[-1]]
    change_form = TenantBillingForm
    extra_readonly = ("balance", "ledger")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_balance=balance_expression(tenant_ref="pk"))

    @admin.display(description="balance (USD)", ordering="_balance")
    def balance(self, obj):
        return getattr(obj, "_balance", None) if obj.pk else None

    @admin.display(description="ledger")
    def ledger(self, obj) -> str:
        if not obj.pk:
            return "-"
        entries = reverse("admin:billing_ledgerentry_changelist") + f"?tenant__id__exact={obj.pk}"
        add = reverse("admin:billing_ledgerentry_add") + f"?tenant={obj.pk}"
        return format_html('<a href="{}">ledger entries</a> · <a href="{}">add a credit or refund</a>', entries, add)

    def tenant_write(self, request, tenant, data: dict):
        tenant = super().tenant_write(request, tenant, data)
        return services.spend_limit_set(tenant=tenant, limit=data.get("spend_limit"))


tenant_admin_replace(TenantBillingAdmin)
