from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from nodes.models import HardwareType, Location


class LocationOutput(serializers.ModelSerializer):
    class Meta:
        model = Location
        fields = ["id", "slug", "name", "country"]
        read_only_fields = fields


class AvailabilityOutput(serializers.Serializer):
    location_id = serializers.IntegerField()
    location = serializers.CharField(help_text="location slug")
    simulated = serializers.BooleanField(help_text="capacity of nodes started with --simulate-gpus: not real GPUs")
    nodes_online = serializers.IntegerField()
    gpus_free = serializers.IntegerField(help_text="free GPUs; for a cpu_only kind, free replica slots")
    max_gpus_per_replica_now = serializers.IntegerField(
        help_text="largest allowed GPU count one replica could get right now (a replica never spans nodes)"
    )


class HardwareTypeOutput(serializers.ModelSerializer):
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=10, decimal_places=4, coerce_to_string=True,
        help_text="USD per GPU-hour (per replica-hour for a cpu_only kind), billed per second",
    )
    availability = serializers.SerializerMethodField()

    class Meta:
        model = HardwareType
        fields = [
            "id", "slug", "name", "gpu_model", "gpu_memory_gib", "gpus_per_node", "allowed_gpu_counts",
            "vcpus_per_gpu", "memory_gib_per_gpu", "price_per_gpu_hour", "cpu_only", "availability",
        ]
        read_only_fields = fields

    @extend_schema_field(AvailabilityOutput(many=True))
    def get_availability(self, obj: HardwareType) -> list[dict]:
        capacity = self.context.get("capacity", {})
        return AvailabilityOutput(capacity.get(obj.pk, []), many=True).data

