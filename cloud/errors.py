"""One error shape for the whole API: RFC 9457 problem details.

Every error under /api/ is `application/problem+json`:
    {"type", "title", "status", "detail", "instance", "errors": [{"field", "message", "code"}]}
`errors` lists each bad field on a 400 (dotted paths for nested fields, e.g. `env.1BAD`).
DRF's exceptions go through `problem_exception_handler`; what DRF never sees (an unknown URL,
an exception outside a view) goes through `ApiProblemMiddleware`, so a client never gets an
HTML page or a stack trace.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from cloud.exceptions import ApplicationError

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://docs.gantry.cloud/problems/"

_TITLES = {
    400: "Invalid request",
    401: "Authentication required",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem_body(status: int, *, detail: str, code: str | None = None, title: str | None = None,
                 instance: str | None = None, errors: list[dict] | None = None, **extra) -> dict:
    body = {
        "type": TYPE_BASE + (code or str(status)),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body["errors"] = errors or []
    body.update(extra)
    return body


def flatten_details(details, prefix: str = "") -> list[dict]:
    """DRF's nested error details (`ValidationError.get_full_details()`: {"field": [{"message",
    "code"}], "nested": {...}, "list": [...]}) as the flat `errors` list of a problem document:
    [{"field": "a.b" or "list.0" or None, "message": ..., "code": ...}]. `non_field_errors` name
    no field (their parent's, or None at the top). Every surface that answers a validation error
    (the API, the SSE and WebSocket streams) reports its fields this way."""
    out: list[dict] = []
    if isinstance(details, dict):
        for key, value in details.items():
            name = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            out.extend(flatten_details(value, name))
    elif isinstance(details, list):
        if all(isinstance(d, dict) and {"message", "code"} <= set(d) for d in details):
            out.extend({"field": prefix or None, "message": str(d["message"]), "code": d["code"]} for d in details)
        else:
            for index, value in enumerate(details):
                out.extend(flatten_details(value, f"{prefix}.{index}" if prefix else str(index)))
    elif isinstance(details, dict) is False and details is not None:
        out.append({"field": prefix or None, "message": str(details), "code": "invalid"})
    return out


def problem_exception_handler(exc, context):
    request = context.get("request")
    instance = request.path if request is not None else None
    headers = {}

    if isinstance(exc, ApplicationError):
        status, code, title, detail, errors = exc.status, exc.code, exc.title, exc.detail, exc.errors
        body = problem_body(status, detail=detail, code=code, title=title, instance=instance, errors=errors, **exc.extra)
        return Response(body, status=status, content_type=PROBLEM_CONTENT_TYPE)

    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied(str(exc) or None)
    elif isinstance(exc, DjangoValidationError):
        exc = drf.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})

    if isinstance(exc, drf.APIException):
        status = exc.status_code
        errors: list[dict] = []
        if isinstance(exc, drf.ValidationError):
            errors = flatten_details(exc.get_full_details())
            fields = sorted({e["field"] for e in errors if e["field"]})
            detail = ("Invalid " + ", ".join(fields)) if fields else (errors[0]["message"] if errors else "Invalid request")
            code = "validation_error"
        else:
            detail = str(exc.detail)
            code = exc.default_code
        if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)) and request is not None:
            authenticate_header = context["view"].get_authenticate_header(request) if context.get("view") else None
            if authenticate_header:
                headers["WWW-Authenticate"] = authenticate_header
            status = 401 if authenticate_header else status
        if isinstance(exc, drf.Throttled) and exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
        body = problem_body(status, detail=detail, code=code, instance=instance, errors=errors)
        return Response(body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)

    logger.exception("unhandled API error on %s", instance)
    return Response(problem_body(500, detail="An internal error occurred; it has been logged.", code="internal_error",
                                 instance=instance), status=500, content_type=PROBLEM_CONTENT_TYPE)


class ApiProblemMiddleware:
    """Turns what reaches /api/ outside DRF (unknown URLs, 405s from Django, crashes) into
    problem details; the rest of the site keeps Django's own pages."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not self._is_api(request) or response.status_code < 400:
            return response
        content_type = response.get("Content-Type", "")
        if "json" in content_type:
            return response
        return self._problem(request, response.status_code)

    def process_exception(self, request, exception):
        if not self._is_api(request):
            return None
        if isinstance(exception, Http404):
            return self._problem(request, 404)
        logger.exception("unhandled error on %s", request.path)
        return self._problem(request, 500)

    @staticmethod
    def _is_api(request) -> bool:
        return request.path.startswith("/api/")

    @staticmethod
    def _problem(request, status: int) -> JsonResponse:
        detail = {
            404: f"No API endpoint or object at {request.path}.",
            405: f"{request.method} is not allowed on {request.path}.",
            500: "An internal error occurred; it has been logged.",
        }.get(status, _TITLES.get(status, "Error"))
        return JsonResponse(problem_body(status, detail=detail, instance=request.path), status=status,
                            content_type=PROBLEM_CONTENT_TYPE)
