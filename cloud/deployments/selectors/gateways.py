"""The gateway registry as operators see it (system status, the admin)."""

from __future__ import annotations

from cloud.deployments.models import Gateway
from cloud.deployments.routes import route_table


def gateways_status() -> list[dict]:
    """Each registered gateway, when the plane last pushed to it and last succeeded, and whether
    what it last confirmed is the table the database gives now."""
    gateways = list(Gateway.objects.order_by("name"))
    if not gateways:
        return []
    digest = route_table().digest()
    return [{
        "name": gateway.name, "control_url": gateway.control_url, "last_push_at": gateway.last_push_at,
        "last_success_at": gateway.last_success_at,
        "serving_current_table": gateway.last_digest == digest and not gateway.last_error,
        "last_error": gateway.last_error or None,
    } for gateway in gateways]
