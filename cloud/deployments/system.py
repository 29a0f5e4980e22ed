"""`GET /api/v1/system/status`: the operators' one-glance view of the whole cloud. It lives
here, not in nodes/, because it counts deployments too (imports run deployments → nodes)."""

from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from cloud.deployments.models import Deployment
from cloud.deployments.selectors import gateways_status
from nodes.api import StaffView
from nodes.selectors import fleet_summary


class GatewayStatusOutput(serializers.Serializer):
    name = serializers.CharField()
    control_url = serializers.CharField()
    last_push_at = serializers.DateTimeField(allow_null=True, help_text="When the plane last sent it the table.")
    last_success_at = serializers.DateTimeField(allow_null=True, help_text="When it last took a table.")
    serving_current_table = serializers.BooleanField(
        help_text="What it last took is the table the database gives now (and its last push did not fail).")
    last_error = serializers.CharField(allow_null=True, help_text="Why its last push failed; null after a success.")


class SystemStatusView(StaffView):
    @extend_schema(summary="Fleet, deployments and gateways at a glance (operators)", responses=inline_serializer(
        "SystemStatus", {"nodes": serializers.DictField(), "gpus": serializers.DictField(),
                         "cpu_slots": serializers.DictField(), "deployments": serializers.DictField(),
                         "gateways": GatewayStatusOutput(many=True)}))
    def get(self, request):
        deployments = dict(
            Deployment.objects.filter(deleted_at__isnull=True).values_list("status").annotate(n=Count("pk")).order_by()
        )
        gateways = GatewayStatusOutput(gateways_status(), many=True).data
        return Response({**fleet_summary(), "deployments": deployments, "gateways": gateways})
