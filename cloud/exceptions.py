"""Domain errors raised by services and selectors; `cloud/errors.py` maps them to HTTP.

Services never build responses: a Celery task or the admin calling the same service gets the
same exception and decides for itself what to do with it.
"""

from __future__ import annotations


class ApplicationError(Exception):
    status = 400
    title = "Invalid request"
    code = "invalid"

    def __init__(self, detail: str, *, errors: list[dict] | None = None, extra: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    """Input that only the domain can reject (an unknown template id, a GPU count the hardware
    does not offer). `field` names the request field, as a serializer error would."""

    def __init__(self, field: str, message: str, *, code: str = "invalid"):
        super().__init__(message, errors=[{"field": field, "message": message, "code": code}])


class NotFound(ApplicationError):
    status = 404
    title = "Not found"
    code = "not_found"


class Conflict(ApplicationError):
    status = 409
    title = "Conflict"
    code = "conflict"


class InsufficientFunds(ApplicationError):
    status = 402
    title = "Payment required"
    code = "insufficient_funds"


class QuotaExceeded(ApplicationError):
    status = 429
    title = "Quota exceeded"
    code = "quota_exceeded"
