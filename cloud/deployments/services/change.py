"""PATCH: scale, extend, replace env or the extra ports (a rolling restart of what runs), change
the endpoint's settings at the gateway. Other fields are fixed at creation (make a new deployment
to change the image or hardware)."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from cloud.deployments import selectors
from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services import quotas
from cloud.deployments.services.events import actor_label, event_record
from cloud.deployments.services.expose import expose_check, gateway_ports_sync
from cloud.deployments.services.gateways import ENDPOINT_SETTINGS, routes_changed
from cloud.deployments.services.rolling import deployment_roll
from cloud.deployments.services.status import incarnations_create, missing_ordinals, replicas_stop, unfinished_q
from cloud.exceptions import Conflict, InvalidInput
from protocol.vocabulary import LIVE_STATUSES
from volumes import selectors as volume_selectors
from volumes import services as volume_services
from volumes.services import Requested

S = Deployment.Status
# What the gateway's route table holds of a deployment, besides its replicas.
ROUTED = {"replica_count", "stop_grace_seconds", "expose", *ENDPOINT_SETTINGS}
# What decides whether the deployment's TCP ports may be public.
_EXPOSURE = {"expose", "allow_public_tcp", "endpoint_access"}


def _scale(*, tenant, deployment: Deployment, replica_count: int) -> None:
    old = deployment.replica_count
    if replica_count == old:
        return
    if deployment.status == S.STOPPING:
        raise Conflict("The deployment is stopping; change replica_count once it has stopped.",
                       extra={"status_now": deployment.status})
    live = deployment.status in LIVE_STATUSES
    if replica_count > old and live:
        locked = quotas.tenant_lock(tenant=tenant)
        quotas.check_gpu_quota(
            tenant=locked, gpus_needed=deployment.gpus_per_container * replica_count, exclude_id=deployment.pk,
            cpu_only=deployment.hardware_type.cpu_only,
        )
        quotas.check_funds(tenant=locked, hourly_cost=quotas.hourly_quote(deployment=deployment,
                                                                          replica_count=replica_count),
                           exclude_id=deployment.pk)
    deployment.replica_count = replica_count
    if replica_count > old:
        locked = quotas.tenant_lock(tenant=tenant)
        volume_services.template_quota_check(tenant=locked, deployment_id=deployment.pk,
                                             template=_template_dict(deployment), replica_count=replica_count)
    if replica_count > old:
        if live:
            incarnations_create(deployment=deployment, ordinals=missing_ordinals(deployment))
        return  # a stopped deployment gets its replicas when started
    # Scale-down stops the removed ordinals' incarnations; their rows stay as history.
    replicas_stop(Replica.objects.filter(unfinished_q(), deployment=deployment, ordinal__gte=replica_count),
                  reason="removed by scale-down")


def _template_dict(deployment: Deployment) -> dict | None:
    template = volume_selectors.template_of(deployment_id=deployment.pk)
    return None if template is None else {"size_gib": template.size_gib, "mount_path": template.mount_path,
                                          "keep": template.keep}


def _current_volumes(deployment: Deployment) -> Requested:
    return Requested(attach=[{"volume_id": str(a.volume_id), "mount_path": a.mount_path, "mode": a.mode}
                             for a in volume_selectors.attachments_of(deployment_id=deployment.pk)],
                     template=_template_dict(deployment))


def _volumes(*, tenant, actor, deployment: Deployment, requested: Requested | None, replica_count: int) -> bool:
    """Checks the deployment's volumes against its (new) replica count, and sets them when the
    PATCH gives them. True when what a VM mounts changed."""
    given = requested is not None
    requested = requested if given else _current_volumes(deployment)
    if not requested.attach and requested.template is None:
        if not given:
            return False
    locked = quotas.tenant_lock(tenant=tenant)
    volumes = volume_services.attachments_check(
        tenant=locked, deployment_id=deployment.pk, requested=requested, replica_count=replica_count,
        location_ids=list(deployment.locations.values_list("pk", flat=True)), pinned_node_id=deployment.node_id)
    if not given:
        return False
    volume_services.template_quota_check(tenant=locked, deployment_id=deployment.pk, template=requested.template,
                                         replica_count=replica_count)
    return volume_services.attachments_set(deployment=deployment, volumes=volumes, requested=requested, actor=actor)


def _extend(*, deployment: Deployment, duration_hours: int) -> None:
    """`duration_hours` counts from creation; PATCH may only lengthen it."""
    if deployment.duration_hours is not None and duration_hours < deployment.duration_hours:
        raise InvalidInput(
            "duration_hours",
            f"duration_hours can only be extended (now {deployment.duration_hours}); stop the deployment to end it sooner.",
            code="shorter",
        )
    expires_at = deployment.created_at + timedelta(hours=duration_hours)
    if expires_at <= timezone.now():
        raise InvalidInput(
            "duration_hours",
            f"duration_hours counts from creation ({deployment.created_at:%Y-%m-%dT%H:%M:%SZ}); "
            f"{duration_hours} hour(s) would end in the past.",
            code="in_the_past",
        )
    deployment.duration_hours, deployment.expires_at = duration_hours, expires_at


@transaction.atomic
def deployment_update(*, tenant, actor, deployment_id, changes: dict) -> Deployment:
    """`changes` may hold replica_count, duration_hours, stop_grace_seconds, env, secret_env, endpoint_access,
    request_timeout_s, max_request_body_mb, expose, allow_public_tcp (each optional). A change of
    `expose` reaches the gateway at once and each replica's node when the replica next starts."""
    deployment = selectors.deployment_get_for_update(tenant=tenant, deployment_id=deployment_id)
    changed: list[str] = []
    volumes_changed = False
    if "volumes" in changes or changes.get("replica_count", deployment.replica_count) > deployment.replica_count:
        volumes_changed = _volumes(tenant=tenant, actor=actor, deployment=deployment, requested=changes.get("volumes"),
                                   replica_count=changes.get("replica_count", deployment.replica_count))
        if volumes_changed:
            changed.append("volumes")
    if "replica_count" in changes and changes["replica_count"] != deployment.replica_count:
        before = deployment.replica_count
        _scale(tenant=tenant, deployment=deployment, replica_count=changes["replica_count"])
        changed.append("replica_count")
        event_record(tenant=tenant, deployment=deployment, type="deployment.scaled", payload={
            "from": before, "to": deployment.replica_count, "actor": actor_label(actor)})
    if "duration_hours" in changes and changes["duration_hours"] != deployment.duration_hours:
        _extend(deployment=deployment, duration_hours=changes["duration_hours"])
        changed.append("duration_hours")
    if "stop_grace_seconds" in changes and changes["stop_grace_seconds"] != deployment.stop_grace_seconds:
        deployment.stop_grace_seconds = changes["stop_grace_seconds"]
        changed.append("stop_grace_seconds")
    for name in ENDPOINT_SETTINGS:
        if name in changes and changes[name] != getattr(deployment, name):
            setattr(deployment, name, changes[name])
            changed.append(name)
    # Secrets are compared by nothing (they are decrypted only for a node): any secret_env given
    # is a change of what the workload sees.
    env_changed = "secret_env" in changes or ("env" in changes and dict(changes["env"]) != deployment.env)
    old_expose = list(deployment.expose or [])
    for name in ("expose", "allow_public_tcp"):
        if name in changes and changes[name] != getattr(deployment, name):
            setattr(deployment, name, changes[name])
            changed.append(name)
    if _EXPOSURE.intersection(changed):
        expose_check(deployment=deployment)
    if "expose" in changed:
        gateway_ports_sync(deployment=deployment)
    if "secret_env" in changes:
        deployment.set_secret_env(changes["secret_env"])
        changed.append("secret_env_variables")
    if "env" in changes:
        deployment.env = dict(changes["env"])
        changed.append("env")
    overlap = set(deployment.env) & set(deployment.secret_env_keys)
    if overlap:
        if "env" in changes:
            raise InvalidInput(
                "env", f"{', '.join(sorted(overlap))} is already a secret variable; a name is plain or secret, not both.",
                code="duplicate_name",
            )
        for key in overlap:  # a new secret replaces the plain variable of the same name
            deployment.env.pop(key)
    # A VM takes its env and publishes its ports when it starts: the placed replicas restart
    # (rolling) to take the new ones.
    ports_changed = sorted(p["port"] for p in old_expose) != sorted(p["port"] for p in deployment.expose or [])
    cause = "env changed" if env_changed else "ports changed" if ports_changed else "volumes changed"
    restarted = (env_changed or ports_changed or volumes_changed) and deployment.status in (S.STARTING, S.RUNNING)
    if restarted:
        deployment_roll(deployment=deployment)
    deployment.save()
    if ROUTED.intersection(changed):
        routes_changed()
    if changed:
        event_record(tenant=tenant, deployment=deployment, type="deployment.updated", payload={
            "fields": changed, "replica_count": deployment.replica_count,
            "expires_at": deployment.expires_at.isoformat() if deployment.expires_at else None,
            "actor": actor_label(actor),
        })
    if restarted:
        event_record(tenant=tenant, deployment=deployment, type="deployment.restarted",
                     payload={"actor": actor_label(actor), "cause": cause})
    return deployment
