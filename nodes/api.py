"""`/api/v1/hardware` and `/api/v1/locations`: the fleet as customers see it.

Not tenant-specific (every tenant sees the same catalog and capacity), but still behind a token
with `templates:read`: free capacity is commercially sensitive and scraping it anonymously would
be free market intelligence.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework.response import Response
from rest_framework.views import APIView

from nodes import selectors
from nodes.serializers import HardwareTypeOutput, LocationOutput


class CatalogView(APIView):
    read_scopes = ["templates:read"]
    write_scopes = ["templates:read"]  # only GET is routed; a POST is a 405 after auth
    tenant_required = False


class HardwareListView(CatalogView):
    @extend_schema(
        summary="List hardware types with prices and free capacity per location",
        responses=inline_serializer("HardwareList", {"hardware": HardwareTypeOutput(many=True)}),
    )
    def get(self, request):
        capacity = selectors.capacity_by_hardware()
        serializer = HardwareTypeOutput(selectors.hardware_types_list(), many=True, context={"capacity": capacity})
        return Response({"hardware": serializer.data})


class LocationListView(CatalogView):
    @extend_schema(
        summary="List locations (regions)",
        responses=inline_serializer("LocationList", {"locations": LocationOutput(many=True)}),
    )
    def get(self, request):
        return Response({"locations": LocationOutput(selectors.locations_list(), many=True).data})
