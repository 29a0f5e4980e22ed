"""Tenant-scoped reads of deployments, their replicas, logs and events.

Every function takes `tenant=` (or a filter made by one that did): another tenant's deployment
is simply not found (404), never "found but forbidden". Deleted deployments are invisible here
too. Split by concept: `deployments` (deployments, replicas, what a tenant has committed), `logs`
(log pages under a byte budget, heads and counts for the live tail), `events` (the event feeds),
`endpoint_keys` (a deployment's live keys), `gateways` (the gateway registry, for operators),
`request_metrics` (a deployment's requests through the gateways).
"""

from cloud.deployments.selectors.deployments import (  # noqa: F401
    Commitment,
    HOLDING_STATUSES,
    Page,
    commitments_for,
    deployment_count_for,
    deployment_get,
    deployment_get_for_update,
    deployment_id_for,
    deployment_ids_for,
    deployments_for,
    deployments_in_order,
    gpus_in_use_for,
    replicas_for,
)

from cloud.deployments.selectors.logs import (  # noqa: F401
    LINE_OVERHEAD_BYTES,
    LOG_ROW_FIELDS,
    LogFilter,
    log_count,
    log_filter_for,
    log_head,
    log_page,
    log_tail_start,
    logs_for,
)

from cloud.deployments.selectors.events import (  # noqa: F401
    events_for,
    events_for_tenant,
)

from cloud.deployments.selectors.endpoint_keys import (  # noqa: F401
    endpoint_keys_for,
)

from cloud.deployments.selectors.gateways import (  # noqa: F401
    gateways_status,
)

from cloud.deployments.selectors.request_metrics import (  # noqa: F401
    histogram_quantile,
    request_metrics_for,
)
