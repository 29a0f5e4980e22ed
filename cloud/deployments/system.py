"""`GET /api/v1/system/status`: the operators' one-glance view of the whole cloud. It lives
here, not in nodes/, because it counts deployments too (imports run deployments → nodes)."""

from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from cloud.deployments.models import Deployment
from nodes.api import StaffView
from nodes.selectors import fleet_summary


class SystemStatusView(StaffView):
    @extend_schema(summary="Fleet and deployments at a glance (operators)", responses=inline_serializer(
        "SystemStatus", {"nodes": serializers.DictField(), "gpus": serializers.DictField(),
                         "cpu_slots": serializers.DictField(), "deployments": serializers.DictField()}))
    def get(self, request):
        deployments = dict(
            Deployment.objects.filter(deleted_at__isnull=True).values_list("status").annotate(n=Count("pk")).order_by()
        )
        return Response({**fleet_summary(), "deployments": deployments})
