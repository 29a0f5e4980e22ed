"""Periodic work for deployments; each task only calls a service (safe to run twice).

Beat entries (in cloud/settings.py CELERY_BEAT_SCHEDULE):
    "deployments-expire-due": {"task": "deployments.expire_due", "schedule": 60.0},
    "deployments-purge-idempotency-keys": {"task": "deployments.purge_idempotency_keys", "schedule": 3600.0},
    "deployments-purge-logs": {"task": "deployments.purge_logs", "schedule": 300.0},
    "deployments-purge-events": {"task": "deployments.purge_events", "schedule": 3600.0},
    "deployments-push-routes": {"task": "deployments.push_routes", "schedule": GANTRY_GATEWAY_PUSH_INTERVAL_S},
    "deployments-collect-request-stats": {"task": "deployments.collect_request_stats", "schedule": 60.0},
"""

from __future__ import annotations

from celery import shared_task

from cloud.deployments import services
from cloud.deployments.services import drain, funds, gateways, request_stats, retention


@shared_task(name="deployments.expire_due")
def deployments_expire_due() -> int:
    """Deployments past expires_at become `expired` (their replicas stop)."""
    return services.deployment_expire_due()


@shared_task(name="deployments.purge_idempotency_keys")
def idempotency_keys_purge() -> int:
    """Idempotency keys older than IDEMPOTENCY_KEY_TTL_HOURS are forgotten."""
    return services.idempotency_keys_purge()


@shared_task(name="deployments.purge_logs")
def logs_purge() -> int:
    """Log lines older than LOG_RETENTION_DAYS are deleted, in bounded batches."""
    return retention.logs_purge()


@shared_task(name="deployments.purge_events")
def events_purge() -> int:
    """Events older than EVENT_RETENTION_DAYS are deleted, in bounded batches."""
    return retention.events_purge()


@shared_task(name="deployments.schedule_pending")
def schedule_pending() -> int:
    """Places pending replicas (queued by every change that can make room)."""
    return services.schedule_pending()


@shared_task(name="deployments.fleet_sweep")
def fleet_sweep() -> dict:
    """Silent nodes → offline → their replicas lost and re-placed; drains progress; a
    scheduling pass for whatever waits."""
    return services.fleet_sweep()


@shared_task(name="deployments.end_drains")
def drains_end() -> int:
    """Replicas whose drain is over leave their nodes' desired sets (queued for each drain's
    end; the fleet sweep ends any whose task was lost)."""
    return drain.drains_end()


@shared_task(name="deployments.funds_enforce")
def funds_enforce() -> dict:
    """Low-balance warnings, out-of-funds grace periods and their stops or cancellations
    (kicked after every metering pass and every credit)."""
    return funds.funds_enforce()


@shared_task(name="deployments.push_routes", ignore_result=True)
def routes_push() -> dict:
    """The route table to every registered gateway (queued by every change to routes, and
    periodically by beat); gateways already serving it are skipped for up to a minute."""
    return gateways.routes_push()


@shared_task(name="deployments.collect_request_stats", ignore_result=True)
def request_stats_collect() -> dict:
    """Every gateway's per-minute request counts of the last hour into RequestMinute rows (a
    failing gateway is logged and skipped); rows older than two days are purged."""
    return request_stats.request_stats_collect()
