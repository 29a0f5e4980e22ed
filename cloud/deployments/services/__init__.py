"""Every write to deployments goes through these functions (API views, Celery tasks, the
admin and, later, the agent consumer all call the same code). Split by concept:

- `create`: validating a spec against the catalog, quotas and funds, and creating it;
- `change`: PATCH (replicas, duration, env);
- `lifecycle`: start, stop, restart, delete, expiry;
- `status`: incarnations and the deployment status derived from them;
- `placement`: the scheduler; `fleet`: lost nodes, drains and the periodic sweep;
- `drain`: a serving replica leaves the gateway's pool before its VM stops; `rolling`: restarts
  that replace replicas while the old ones serve;
- `agents`: what node agents report and what they should run (the consumer's sink);
- `events`: the per-deployment event feed; `logs`: storing log lines; `tickets`: log socket tickets;
- `idempotency`: replaying a POST retried with the same Idempotency-Key;
- `endpoint_keys`: keys to private endpoints; `gateways`: the gateway registry and route pushes;
- `request_stats`: collecting the gateways' per-minute request counts.
"""

from cloud.deployments.services.change import deployment_update
from cloud.deployments.services.create import deployment_create
from cloud.deployments.services.endpoint_keys import MadeKey, endpoint_key_create, endpoint_key_revoke
from cloud.deployments.services.events import event_record
from cloud.deployments.services.gateways import gateway_register, routes_changed, routes_push
from cloud.deployments.services.request_stats import request_minutes_purge, request_stats_collect
from cloud.deployments.services.tickets import log_ticket_issue, log_ticket_redeem
from cloud.deployments.services.fleet import drains_progress, fleet_sweep, node_lost
from cloud.deployments.services.placement import schedule_pending
from cloud.deployments.services.idempotency import (
    IdempotentResult,
    idempotency_fingerprint,
    idempotency_keys_purge,
    idempotent_create,
)
from cloud.deployments.services.lifecycle import (
    deployment_delete,
    deployment_expire_due,
    deployment_restart,
    deployment_start,
    deployment_stop,
)

__all__ = [
    "IdempotentResult",
    "MadeKey",
    "endpoint_key_create",
    "endpoint_key_revoke",
    "gateway_register",
    "routes_changed",
    "routes_push",
    "request_minutes_purge",
    "request_stats_collect",
    "deployment_create",
    "deployment_delete",
    "deployment_expire_due",
    "deployment_restart",
    "deployment_start",
    "deployment_stop",
    "deployment_update",
    "event_record",
    "log_ticket_issue",
    "log_ticket_redeem",
    "drains_progress",
    "fleet_sweep",
    "node_lost",
    "schedule_pending",
    "idempotency_fingerprint",
    "idempotency_keys_purge",
    "idempotent_create",
]
