"""What `POST /deployments/estimate` answers (it takes the create body, DeploymentEstimateInput)."""

from __future__ import annotations

from rest_framework import serializers


class EstimateLocationOutput(serializers.Serializer):
    location_id = serializers.IntegerField()
    location = serializers.CharField(help_text="The location's slug.")
    nodes_with_room = serializers.IntegerField(help_text="Online nodes with room for at least one replica now.")
    replicas_placeable_now = serializers.IntegerField(help_text="Replicas of this shape that fit there right now.")
    price_per_gpu_hour = serializers.CharField(help_text="USD per GPU-hour there (per replica-hour on CPU-only kinds).")
    hourly_cost = serializers.CharField(help_text="USD per hour if every replica ran there.")


class EstimateCapacityOutput(serializers.Serializer):
    available_now = serializers.BooleanField(help_text="Every replica could be placed right now.")
    replicas_placeable_now = serializers.IntegerField()
    locations = EstimateLocationOutput(many=True, help_text="Where there is room now (allowed locations only).")


class EstimateFundsOutput(serializers.Serializer):
    balance = serializers.CharField()
    committed_hourly_cost = serializers.CharField(
        help_text="USD per hour of what the tenant already has pending or running (at today's quotes).")
    covers_one_hour = serializers.BooleanField(
        help_text="false: create would be refused with 402 now (the balance is below committed_hourly_cost + hourly_cost).")
    hours_covered = serializers.CharField(
        allow_null=True, help_text="Hours the balance pays for this deployment together with what is already committed.")
    spend_limit = serializers.CharField(allow_null=True)
    spend_this_month = serializers.CharField()
    spend_limit_reached = serializers.BooleanField(help_text="true: create would be refused with 402 now.")


class EstimateVolumesOutput(serializers.Serializer):
    volumes = serializers.IntegerField(help_text="Per-replica volumes the deployment would make (one per ordinal).")
    gib = serializers.IntegerField(help_text="Their provisioned GiB, all together.")
    price_per_gib_month = serializers.CharField()
    hourly_cost = serializers.CharField(help_text="USD per hour for them, billed beside hourly_cost from each one's "
                                                  "creation until it is deleted.")


class EstimateOutput(serializers.Serializer):
    hardware_id = serializers.IntegerField()
    hardware = serializers.CharField(help_text="The hardware type's slug.")
    gpus_per_container = serializers.IntegerField()
    replica_count = serializers.IntegerField()
    location_ids = serializers.ListField(child=serializers.IntegerField())
    price_per_gpu_hour = serializers.CharField(help_text="The quote: the highest price among the allowed locations.")
    hourly_cost = serializers.CharField(help_text="USD per hour at the quote (what create returns as estimated_hourly_cost).")
    volumes = EstimateVolumesOutput(allow_null=True, help_text="null without a per-replica volume.")
    duration_hours = serializers.IntegerField(allow_null=True)
    cost_for_duration = serializers.CharField(allow_null=True, help_text="hourly_cost x duration_hours.")
    capacity = EstimateCapacityOutput()
    funds = EstimateFundsOutput()
