"""Reads of endpoint keys: tenant-scoped, like every read of a deployment."""

from __future__ import annotations

from django.db.models import QuerySet

from cloud.deployments.models import EndpointKey
from cloud.deployments.selectors.deployments import deployment_id_for


def endpoint_keys_for(*, tenant, deployment_id) -> QuerySet[EndpointKey]:
    """The deployment's live keys, oldest first; NotFound when the deployment is not the tenant's."""
    pk = deployment_id_for(tenant=tenant, deployment_id=deployment_id)
    return EndpointKey.objects.filter(deployment_id=pk, revoked_at__isnull=True).order_by("created_at", "id")
