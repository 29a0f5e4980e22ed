"""OpenAPI details drf-spectacular cannot infer: the problem-details error shape on every
operation, and the OAuth2 scopes each operation needs (read from the same view attributes
`ScopedTenantPermission` enforces, so the document cannot drift from the behaviour)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from cloud.auth import required_scopes_for

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "errors"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "code"],
                "properties": {
                    "field": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

_ERROR_STATUSES = {
    "400": "Invalid input: `errors` names each bad field",
    "401": "No or invalid bearer token",
    "403": "The token lacks a scope, or the caller is not a member of the X-Tenant tenant",
    "402": "Balance or spend limit does not cover the request",
    "404": "No such object for this tenant",
    "405": "Method not allowed",
    "406": "The Accept header asks for a type the API cannot produce",
    "409": "Conflicts with the object's current state (a name in use, an invalid transition)",
    "415": "The request body is not JSON",
    "429": "Rate limit or quota exceeded",
}


def _relax_nullable_any(node):
    """drf-spectacular renders a nullable untyped field as oneOf[{}, {type: null}], which no
    value can satisfy (null matches both branches, and oneOf wants exactly one). `{}` already
    admits null, so the oneOf collapses to it."""
    if isinstance(node, dict):
        one_of = node.get("oneOf")
        if isinstance(one_of, list) and len(one_of) == 2 and {} in one_of and {"type": "null"} in one_of:
            del node["oneOf"]
        for value in node.values():
            _relax_nullable_any(value)
    elif isinstance(node, list):
        for value in node:
            _relax_nullable_any(value)


def add_problem_responses(result, generator, request, public):
    _relax_nullable_any(result)
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _ERROR_STATUSES.items():
                existing = responses.get(status)
                if existing is None or "content" not in existing:
                    responses[status] = {"description": description, "content": {"application/problem+json": {"schema": ref}}}
    return result


class ScopedOAuth2Scheme(OpenApiAuthenticationExtension):
    target_class = "oauth2_provider.contrib.rest_framework.OAuth2Authentication"
    name = "oauth2"
    priority = 1

    def get_security_requirement(self, auto_schema):
        return {self.name: required_scopes_for(auto_schema.view, auto_schema.method)}

    def get_security_definition(self, auto_schema):
        from django.conf import settings

        return {
            "type": "oauth2",
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": "/o/authorize/",
                    "tokenUrl": "/o/token/",
                    "refreshUrl": "/o/token/",
                    "scopes": settings.SCOPES,
                },
                "clientCredentials": {"tokenUrl": "/o/token/", "scopes": settings.SCOPES},
            },
        }
