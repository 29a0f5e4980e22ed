"""`/api/v1/hardware` and `/api/v1/locations`: the fleet as customers see it; `/api/v1/nodes/join`
for agents; `/api/v1/nodes/{id}/cordon|drain|uncordon` and `/api/v1/nodes/{id}/vfio[/validate]`
for operators.

Not tenant-specific (every tenant sees the same catalog and capacity), but still behind a token
with `templates:read`: free capacity is commercially sensitive and scraping it anonymously would
be free market intelligence.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from cloud.exceptions import Conflict, InvalidInput
from nodes import selectors, services
from protocol import wire as protocol
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


# -- joining (the agent, before it has a credential) -------------------------------------------


class JoinInput(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    inventory = serializers.DictField()


class JoinOutput(serializers.Serializer):
    node_id = serializers.IntegerField()
    hostname = serializers.CharField()
    credential = serializers.CharField(help_text="The node's long-lived credential, shown this once.")


class JoinThrottle(AnonRateThrottle):
    rate = "30/min"  # a join token is 256 random bits; the limit only keeps the log readable


class NodeJoinView(APIView):
    """`POST /api/v1/nodes/join`: an agent trades its one-time join token for a credential."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes = [JoinThrottle]

    def get_authenticate_header(self, request):
        # A refused token is a 401 (DRF makes it a 403 when no authenticator names a scheme).
        return 'JoinToken realm="gantry"'

    @extend_schema(summary="Join a node (agent only): trade a one-time join token for its credential",
                   request=JoinInput, responses={201: JoinOutput}, auth=[])
    def post(self, request):
        body = JoinInput(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            inventory = protocol.build(protocol.Inventory, body.validated_data["inventory"], "inventory")
        except protocol.ProtocolError as exc:
            raise InvalidInput("inventory", str(exc)) from None
        try:
            node, credential = services.node_join(token=body.validated_data["token"], inventory=inventory)
        except services.JoinRefused as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        except services.InventoryRefused as exc:
            raise Conflict(str(exc)) from None  # the token is not spent: the refused join rolled back
        return Response({"node_id": node.pk, "hostname": node.hostname, "credential": credential}, status=201)


# -- operators ---------------------------------------------------------------------------------


class StaffView(APIView):
    required_scopes = ["nodes:admin"]
    tenant_required = False

    def check_permissions(self, request):
        super().check_permissions(request)
        if not request.user.is_staff:
            raise exceptions.PermissionDenied("Operators only: this endpoint needs a staff account.")


class NodeActionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    hostname = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()


class NodeActionView(StaffView):
    action: str = ""

    @extend_schema(summary="Cordon, drain or uncordon a node (operators)", request=None,
                   responses={200: NodeActionOutput})
    def post(self, request, node_id: int):
        verb = {"cordon": services.node_cordon, "drain": services.node_drain, "uncordon": services.node_uncordon}[self.action]
        node = verb(node_id=node_id)
        return Response(NodeActionOutput(node).data)


# -- VFIO (operators), in the spirit of the Volant seed's VFIO endpoints -------------------------


class VfioDeviceOutput(serializers.Serializer):
    bdf = serializers.CharField()
    kind = serializers.CharField(help_text="gpu, audio, nvswitch, bridge or other")
    vendor = serializers.CharField()
    device = serializers.CharField()
    driver = serializers.CharField(allow_null=True)
    numa_node = serializers.IntegerField()
    passed = serializers.BooleanField(help_text="Goes into the VM with the group (bridges stay behind).")
    held_by = serializers.CharField(allow_null=True, help_text="The VM (replica id) that holds it now.")


class VfioGroupOutput(serializers.Serializer):
    group = serializers.IntegerField()
    viable = serializers.BooleanField()
    reason = serializers.CharField(allow_blank=True)
    devices = VfioDeviceOutput(many=True)


class NodeVfioOutput(serializers.Serializer):
    node = serializers.DictField()
    reported_at = serializers.CharField(allow_null=True, help_text="When its agent last reported (hello or join).")
    iommu = serializers.BooleanField()
    passthrough = serializers.BooleanField(help_text="Its preflight allows GPU passthrough.")
    reason = serializers.CharField(allow_blank=True)
    groups = VfioGroupOutput(many=True)
    preflight = serializers.DictField()


class VfioValidateInput(serializers.Serializer):
    bdfs = serializers.ListField(child=serializers.CharField(max_length=16), min_length=1, max_length=16,
                                 help_text="The GPUs' PCI addresses, e.g. 0000:18:00.0")


class VfioValidateOutput(serializers.Serializer):
    valid = serializers.BooleanField()
    devices = serializers.ListField(child=serializers.DictField(), help_text="What a VM with these GPUs would get.")
    problems = serializers.ListField(child=serializers.CharField())
    reported_at = serializers.CharField(allow_null=True)


class NodeVfioView(StaffView):
    @extend_schema(summary="IOMMU groups, devices, drivers and viability of a node (operators)",
                   responses={200: NodeVfioOutput})
    def get(self, request, node_id: int):
        return Response(selectors.node_vfio(node_id=node_id))


class NodeVfioValidateView(StaffView):
    @extend_schema(summary="Check that GPUs of a node can go into one VM together (operators)",
                   request=VfioValidateInput, responses={200: VfioValidateOutput})
    def post(self, request, node_id: int):
        body = VfioValidateInput(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(selectors.vfio_validate(node_id=node_id, bdfs=body.validated_data["bdfs"]))
