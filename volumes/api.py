"""`/api/v1/volumes`: a tenant's persistent disks. Reads need `volumes:read`, create and delete
`volumes:write`; attaching one to a deployment is the deployment's `volumes` (deployments:write).
Another tenant's volume is a 404, like a volume that does not exist."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import status
from rest_framework.response import Response

from cloud.api import TenantScopedViewSet, paginator
from volumes import selectors, services
from volumes.models import Volume
from volumes.serializers import VolumeCreateInput, VolumeOutput

VolumeEnvelope = inline_serializer("VolumeEnvelope", {"volume": VolumeOutput()})
ID_PARAMETER = OpenApiParameter("pk", str, OpenApiParameter.PATH, description="Volume id")


@extend_schema_view(
    list=extend_schema(summary="List volumes"),
    create=extend_schema(summary="Create a volume", request=VolumeCreateInput, responses={201: VolumeEnvelope}),
    retrieve=extend_schema(summary="Get a volume", parameters=[ID_PARAMETER], responses=VolumeEnvelope),
    destroy=extend_schema(summary="Delete a volume (its data is erased on its node)", parameters=[ID_PARAMETER],
                          responses={202: VolumeEnvelope}),
)
class VolumeViewSet(TenantScopedViewSet):
    read_scopes = ["volumes:read"]
    write_scopes = ["volumes:write"]
    queryset = Volume.objects.all()
    serializer_class = VolumeOutput
    pagination_class = paginator("volumes")

    def scoped_queryset(self, *, tenant):
        return selectors.volumes_for(tenant=tenant)

    def get_object(self) -> Volume:
        return selectors.volume_get(tenant=self.request.tenant, volume_id=self.kwargs["pk"])

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(VolumeOutput(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response({"volume": VolumeOutput(self.get_object()).data})

    def create(self, request):
        body = VolumeCreateInput(data=request.data)
        body.is_valid(raise_exception=True)
        volume = services.volume_create(tenant=request.tenant, actor=request.user, **body.validated_data)
        return Response({"volume": VolumeOutput(selectors.volume_get(tenant=request.tenant, volume_id=volume.pk)).data},
                        status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        volume = services.volume_delete(volume=self.get_object(), actor=request.user)
        shown = selectors.volumes_for(tenant=request.tenant).filter(pk=volume.pk).first() or volume
        return Response({"volume": VolumeOutput(shown).data}, status=status.HTTP_202_ACCEPTED)
