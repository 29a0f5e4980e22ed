"""The deployments app's tables, by concept: `core` (deployments, replicas, logs, events,
idempotency keys) and `gateway` (endpoint keys, gateways, gateway ports, request minutes).
Everything is importable from here, as Django and the migrations expect."""

from cloud.deployments.models.core import (
    DEFAULT_MAX_REQUEST_BODY_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    ENDPOINT_LABEL_CONSTRAINT,
    MAX_REQUEST_BODY_MB,
    MAX_REQUEST_TIMEOUT_S,
    SHORTAGE_PREFIXES,
    Deployment,
    EndpointLabelField,
    Event,
    IdempotencyKey,
    LogLine,
    Replica,
)
from cloud.deployments.models.gateway import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    EndpointKey,
    Gateway,
    GatewayPort,
    RequestMinute,
)

__all__ = [
    "DEFAULT_MAX_REQUEST_BODY_MB", "DEFAULT_REQUEST_TIMEOUT_S", "ENDPOINT_LABEL_CONSTRAINT", "LATENCY_BOUNDS_MS",
    "LATENCY_BUCKETS", "MAX_REQUEST_BODY_MB", "MAX_REQUEST_TIMEOUT_S", "SHORTAGE_PREFIXES", "Deployment",
    "EndpointKey", "EndpointLabelField", "Event", "Gateway", "GatewayPort", "IdempotencyKey", "LogLine", "Replica",
    "RequestMinute",
]
