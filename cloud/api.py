"""Shared API building blocks: the tenant-scoped viewset and the page/limit paginator.

Every customer-facing viewset derives from `TenantScopedViewSet` and names a selector; the
queryset is built from `request.tenant` and nothing else, so another tenant's object is simply
not there (404), never "there but forbidden" (403).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.response import Response


class TenantScopedViewSet(viewsets.GenericViewSet):
    read_scopes: list[str] = []
    write_scopes: list[str] = []
    lookup_value_regex = "[^/]+"

    def scoped_queryset(self, *, tenant):
        raise ImproperlyConfigured(f"{type(self).__name__} must name its selector in scoped_queryset()")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no tenant
            return self.queryset.none() if self.queryset is not None else None
        return self.scoped_queryset(tenant=self.request.tenant)


class PageLimitQuery(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)


class PageLimitPagination(BasePagination):
    """`?page=&limit=` (limit 20 by default, 100 at most) →
    `{"<items_key>": [...], "pagination": {"page", "limit", "total", "total_pages"}}`.

    A page past the end is an empty list, not a 404: clients loop until `page > total_pages`.
    A bad page or limit is a 400 naming the parameter, never silently clamped.
    """

    items_key = "results"

    def paginate_queryset(self, queryset, request, view=None):
        query = PageLimitQuery(data=request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        self.page, self.limit = query.validated_data["page"], query.validated_data["limit"]
        self.total = queryset.count()
        offset = (self.page - 1) * self.limit
        return list(queryset[offset: offset + self.limit])

    def get_paginated_response(self, data):
        return Response(OrderedDict([(self.items_key, data), ("pagination", self.pagination_meta())]))

    def pagination_meta(self) -> dict:
        return {
            "page": self.page,
            "limit": self.limit,
            "total": self.total,
            "total_pages": math.ceil(self.total / self.limit) if self.total else 0,
        }

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": [self.items_key, "pagination"],
            "properties": {
                self.items_key: schema,
                "pagination": {
                    "type": "object",
                    "required": ["page", "limit", "total", "total_pages"],
                    "properties": {k: {"type": "integer"} for k in ("page", "limit", "total", "total_pages")},
                },
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {"name": "page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 1}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
        ]


def paginator(items_key: str) -> type[PageLimitPagination]:
    return type(f"{items_key.title()}Pagination", (PageLimitPagination,), {"items_key": items_key})
