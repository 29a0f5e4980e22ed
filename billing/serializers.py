"""What the billing API accepts and returns. Every amount is a decimal string with six places."""

from __future__ import annotations

from rest_framework import serializers

from billing.selectors import GROUPINGS

MAX_RANGE_DAYS = 366


class MoneyInput(serializers.DecimalField):
    """An amount in USD as a decimal string ("250.00"): a JSON number is refused, since a float
    cannot hold every amount exactly."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class BalanceOutput(serializers.Serializer):
    balance = serializers.CharField(help_text="USD: the sum of the tenant's ledger (credits, charges, refunds).")
    currency = serializers.CharField()
    spend_this_month = serializers.CharField(help_text="USD metered since the first of this month (UTC).")
    spend_limit = serializers.CharField(allow_null=True, help_text="Monthly spend limit in USD; null for none.")
    burn_rate_per_hour = serializers.CharField(help_text="USD per hour the running replicas and the live volumes "
                                                         "cost now.")
    hours_left = serializers.CharField(allow_null=True, help_text="Hours until the balance runs out at that rate "
                                                                 "(two places); null when nothing runs.")
    as_of = serializers.DateTimeField()


class UsageQuery(serializers.Serializer):
    to = serializers.DateField(required=False, help_text="Last UTC day included (default: the month's last day).")
    group_by = serializers.ChoiceField(choices=sorted(GROUPINGS), default="deployment")

    def get_fields(self):
        fields = super().get_fields()
        # `from` is a Python keyword, so it cannot be declared as an attribute.
        fields["from"] = serializers.DateField(required=False, help_text="First UTC day included (default: the "
                                                                        "first of this month).")
        return fields

    def validate(self, attrs):
        first, last = attrs.get("from"), attrs.get("to")
        if first and last:
            if last < first:
                raise serializers.ValidationError({"to": "to is on or after from."})
            if (last - first).days >= MAX_RANGE_DAYS:
                raise serializers.ValidationError({"to": f"At most {MAX_RANGE_DAYS} days at a time."})
        return attrs


class UsageRowOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["deployment", "volume"], help_text="What the row is of.")
    day = serializers.DateField(allow_null=True, help_text="With group_by=day: the UTC day.")
    deployment_id = serializers.UUIDField(allow_null=True, help_text="null on a volume's row.")
    deployment_name = serializers.CharField(allow_null=True)
    hardware_id = serializers.IntegerField(allow_null=True, help_text="null on a volume's row.")
    hardware = serializers.CharField(allow_null=True, help_text="The hardware type's slug.")
    volume_id = serializers.UUIDField(allow_null=True, help_text="null on a deployment's row.")
    volume_name = serializers.CharField(allow_null=True)
    amount = serializers.CharField(help_text="USD, six places.")
    seconds = serializers.IntegerField(help_text="Replica-seconds metered (a volume's row: seconds it existed).")
    gpu_hours = serializers.CharField(help_text="GPUs x hours behind the amount (0 on CPU-only hardware).")
    gib_hours = serializers.CharField(help_text="A volume's provisioned GiB x hours behind the amount.")


class UsageTotalsOutput(serializers.Serializer):
    amount = serializers.CharField()
    seconds = serializers.IntegerField()
    gpu_hours = serializers.CharField()
    volumes_amount = serializers.CharField(help_text="The part of `amount` that volumes cost.")
    gib_hours = serializers.CharField()


class PaginationOutput(serializers.Serializer):
    page = serializers.IntegerField()
    limit = serializers.IntegerField()
    total = serializers.IntegerField()
    total_pages = serializers.IntegerField()


class UsageOutput(serializers.Serializer):
    usage = UsageRowOutput(many=True)
    totals = UsageTotalsOutput(help_text="Over the whole range, not just this page.")
    group_by = serializers.CharField()
    pagination = PaginationOutput()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DateField()
        fields["to"] = serializers.DateField()
        return fields


class LimitsInput(serializers.Serializer):
    monthly_spend_limit = MoneyInput(
        max_digits=14, decimal_places=6, min_value=0, allow_null=True, required=False,
        help_text="USD per calendar month (UTC), a decimal string; null for no limit; omitted: unchanged.")

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class LimitsOutput(serializers.Serializer):
    monthly_spend_limit = serializers.CharField(allow_null=True)
    spend_this_month = serializers.CharField()
