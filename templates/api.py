"""`/api/v1/templates`: the catalog a customer deploys from.

Reads need `templates:read`; creating, changing or deleting a private template needs
`deployments:write` (a template is a saved deployment recipe, so whoever may deploy may save
one). Global templates are read-only here.
"""

from __future__ import annotations

from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import status
from rest_framework.response import Response

from cloud.api import TenantScopedViewSet, paginator
from templates import selectors, services
from templates.models import Template
from templates.serializers import TemplateInput, TemplateOutput

TemplateEnvelope = inline_serializer("TemplateEnvelope", {"template": TemplateOutput()})
REF_PARAMETER = OpenApiParameter("ref", str, OpenApiParameter.PATH, description="Template id or slug")


class TemplateFilter(filters.FilterSet):
    visibility = filters.ChoiceFilter(choices=[("global", "global"), ("private", "private")], method="filter_visibility")

    class Meta:
        model = Template
        fields = ["visibility"]

    def filter_visibility(self, queryset, name, value):
        return queryset.filter(tenant__isnull=(value == "global"))


@extend_schema_view(
    list=extend_schema(summary="List templates (global and your tenant's private ones)"),
    create=extend_schema(summary="Create a private template", request=TemplateInput, responses={201: TemplateEnvelope}),
    retrieve=extend_schema(summary="Get a template by id or slug", parameters=[REF_PARAMETER], responses=TemplateEnvelope),
    partial_update=extend_schema(summary="Change a private template", parameters=[REF_PARAMETER],
                                 request=TemplateInput(partial=True), responses=TemplateEnvelope),
    destroy=extend_schema(summary="Delete a private template", parameters=[REF_PARAMETER], responses={204: None}),
)
class TemplateViewSet(TenantScopedViewSet):
    read_scopes = ["templates:read"]
    write_scopes = ["deployments:write"]
    queryset = Template.objects.all()
    serializer_class = TemplateOutput
    pagination_class = paginator("templates")
    filterset_class = TemplateFilter
    lookup_field = "ref"
    lookup_url_kwarg = "ref"

    def scoped_queryset(self, *, tenant):
        return selectors.templates_for(tenant=tenant)

    def get_object(self) -> Template:
        return selectors.template_get(tenant=self.request.tenant, ref=self.kwargs["ref"])

    def list(self, request):
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(TemplateOutput(page, many=True).data)

    def retrieve(self, request, ref=None):
        return Response({"template": TemplateOutput(self.get_object()).data})

    def create(self, request):
        body = TemplateInput(data=request.data)
        body.is_valid(raise_exception=True)
        template = services.template_create(tenant=request.tenant, actor=request.user, data=body.validated_data)
        return Response({"template": TemplateOutput(template).data}, status=status.HTTP_201_CREATED)

    def partial_update(self, request, ref=None):
        template = self.get_object()
        services.template_check_editable(template=template)  # 403 before any 400 about the body
        body = TemplateInput(template, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        template = services.template_update(template=template, actor=request.user, data=body.validated_data)
        return Response({"template": TemplateOutput(template).data})

    def destroy(self, request, ref=None):
        services.template_delete(template=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
