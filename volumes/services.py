"""Every write to volumes: the API, the deployments app (attachments, placement), the agent
consumer's heartbeat and billing's grace-period task all call these.

A volume is `pending` (no node), `ready` (it has a node: its file is there, or is made there by
its first start), `deleting` (the erase is asked of its node) and `deleted` (its node's heartbeat
no longer lists it, or it never had a node). Its node is chosen once, by placement, and never
changes here (moving one is operator work that is left for later: docs/api.md).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.selectors import tenant_for_update
from billing import services as billing_services
from cloud.exceptions import Conflict, InvalidInput, QuotaExceeded
from cloud.validators import as_uuid
from nodes import link as node_link
from nodes import selectors as node_selectors
from protocol.wire import MAX_VOLUME_GIB, VolumeMount
from volumes import link, selectors
from volumes.models import MAX_VOLUMES_PER_DEPLOYMENT, Volume, VolumeAttachment, VolumeTemplate

log = logging.getLogger(__name__)
S = Volume.State
RW, RO = Volume.Mode.RW, Volume.Mode.RO
# pg_advisory_xact_lock's first key for "the volume space of node N": two placements choosing
# the same node for new volumes take turns, so neither counts space the other just took.
_SPACE_LOCK = 0x766F6C  # "vol"


def _event(volume: Volume, type: str, *, deployment_id=None, **payload) -> None:  # noqa: A002
    link.side().event_record(tenant_id=volume.tenant_id, deployment_id=deployment_id, type=type,
                             payload={"volume_id": str(volume.pk), "name": volume.name, **payload})


def _quota_check(*, tenant, adding_gib: int) -> None:
    """Caller holds the tenant row lock."""
    used = selectors.volume_used_gib(tenant=tenant)
    if used + adding_gib > tenant.max_volume_gib:
        raise QuotaExceeded(
            f"Quota max_volume_gib reached: tenant '{tenant.slug}' has {used} GiB of volumes of "
            f"{tenant.max_volume_gib}; {adding_gib} GiB more does not fit. Delete a volume or ask an operator "
            "to raise the quota.",
            extra={"quota": "max_volume_gib", "limit": tenant.max_volume_gib, "used": used})


def _name_taken(*, tenant, name: str) -> bool:
    return Volume.objects.filter(tenant=tenant, name=name).exclude(state=S.DELETED).exists()


@transaction.atomic
def volume_create(*, tenant, actor, name: str, size_gib: int, location_id: int) -> Volume:
    locked = tenant_for_update(tenant.pk)
    location = node_selectors.locations_by_id([location_id]).get(location_id)
    if location is None:
        raise InvalidInput("location_id", f"Unknown location id {location_id}. See GET /api/v1/locations.",
                           code="unknown_location")
    if not 0 < size_gib <= MAX_VOLUME_GIB:
        raise InvalidInput("size_gib", f"size_gib is 1 to {MAX_VOLUME_GIB}.", code="out_of_range")
    if _name_taken(tenant=locked, name=name):
        raise Conflict(f"A volume named '{name}' already exists.", errors=[
            {"field": "name", "message": "This name is already used by another volume.", "code": "unique"}])
    _quota_check(tenant=locked, adding_gib=size_gib)
    volume = Volume.objects.create(tenant=locked, name=name, size_gib=size_gib, location=location)
    billing_services.meter_volume_open(volume)  # billed per provisioned GiB from now until deleted
    _event(volume, "volume.created", size_gib=size_gib, location=location.slug, actor=_actor(actor))
    return volume


def _actor(actor) -> str | None:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None
    return actor.get_username()


def _erase(volume: Volume, *, reason: str, actor) -> None:
    """Caller holds the volume's row lock and checked nothing holds it."""
    now = timezone.now()
    # Billed until the customer (or the grace period) asked for it to go, not while it is erased.
    billing_services.meter_volume_close(volume, now)
    if volume.node_id is None:
        # Never placed: no file anywhere, nothing to erase.
        volume.state, volume.deleted_at = S.DELETED, now
        volume.save(update_fields=["state", "deleted_at"])
        _event(volume, "volume.deleted", reason=reason, actor=_actor(actor))
        return
    volume.state = S.DELETING
    volume.save(update_fields=["state"])
    _event(volume, "volume.deleting", node=node_selectors.node_hostname(volume.node_id), reason=reason,
           actor=_actor(actor))
    node_link.notify_node(volume.node_id)  # its consumer sends volume.delete (again on every reconnect)


@transaction.atomic
def volume_delete(*, volume: Volume, actor=None, reason: str = "deleted by user", detach: bool = False) -> Volume:
    """Erases a volume: at once if it never had a node, else `deleting` until its node's
    heartbeat no longer lists it. Idempotent (a volume already on its way out is left so).

    While attached to a deployment it is a 409, unless `detach` (billing's grace-period task:
    the tenant's deployments are stopped): then its attachments go first, provided no VM holds
    the volume any more (a 409 otherwise; the task tries again later)."""
    volume = Volume.objects.select_for_update().get(pk=volume.pk)
    if volume.state in (S.DELETING, S.DELETED):
        return volume
    attachments = list(volume.attachments.filter(deployment__deleted_at__isnull=True).select_related("deployment"))
    owner_live = volume.owner_deployment_id is not None and volume.owner_deployment.deleted_at is None
    if (attachments or owner_live) and not detach:
        names = sorted({a.deployment.name for a in attachments} | ({volume.owner_deployment.name} if owner_live else set()))
        raise Conflict(f"Volume '{volume.name}' is attached to {', '.join(names)}; remove it from the deployment "
                       "(PATCH its volumes, or delete it) first.", extra={"attached_to": names})
    if link.side().volumes_held(volume_ids=[volume.pk]):
        raise Conflict(f"Volume '{volume.name}' is still held by a VM that is stopping; try again once it stopped.")
    for attachment in attachments:
        _detach(attachment, actor=actor)
    _erase(volume, reason=reason, actor=actor)
    return volume


def _detach(attachment: VolumeAttachment, *, actor) -> None:
    _event(attachment.volume, "volume.detached", deployment_id=attachment.deployment_id,
           deployment=attachment.deployment.name, actor=_actor(actor))
    attachment.delete()


# -- what the node says ---------------------------------------------------------------------------


@transaction.atomic
def volumes_node_report(*, node_id: int, volumes: dict[str, int]) -> None:
    """A heartbeat from an agent that keeps volumes: `volumes` is every volume file it holds.
    Files of this node's volumes it lists for the first time now count in its free space; the
    erases it no longer lists are done. A file of a volume the plane did not place there is
    ignored (never erased on a node's word alone)."""
    now = timezone.now()
    listed = [uid for key in volumes if (uid := as_uuid(key)) is not None]
    Volume.objects.filter(node_id=node_id, pk__in=listed, on_node_at__isnull=True).update(on_node_at=now)
    gone = list(Volume.objects.select_for_update(skip_locked=True)
                .filter(node_id=node_id, state=S.DELETING).exclude(pk__in=listed))
    host = node_selectors.node_hostname(node_id) if gone else None
    for volume in gone:
        volume.state, volume.deleted_at = S.DELETED, now
        volume.save(update_fields=["state", "deleted_at"])
        _event(volume, "volume.deleted", node=host)


# -- attachments (deployment create and PATCH) ----------------------------------------------------


@dataclass(frozen=True)
class Requested:
    """A deployment's `volumes` body, as the serializer validated it: attachments by id, and at
    most one per-replica template."""

    attach: list[dict] = field(default_factory=list)  # {"volume_id", "mount_path", "mode"}
    template: dict | None = None  # {"size_gib", "mount_path", "keep"}


def _unknown(volume_id) -> InvalidInput:
    # The same words for a volume that does not exist and for another tenant's: nothing says
    # which it was.
    return InvalidInput("volumes", f"No volume {str(volume_id)[:40]}. See GET /api/v1/volumes.", code="unknown_volume")


def attachments_check(*, tenant, deployment_id, requested: Requested, replica_count: int,
                      location_ids: list[int], pinned_node_id: int | None) -> list[Volume]:
    """The volumes a deployment's body names, checked against the rules only the database knows;
    raises InvalidInput (400) or Conflict (409) saying which rule. Returns them, in order."""
    if len(requested.attach) + (requested.template is not None) > MAX_VOLUMES_PER_DEPLOYMENT:
        raise InvalidInput("volumes", f"At most {MAX_VOLUMES_PER_DEPLOYMENT} volumes per deployment.", code="too_many")
    volumes = []
    for entry in requested.attach:
        uid = as_uuid(entry["volume_id"])
        volume = (Volume.objects.select_for_update(of=("self",)).filter(tenant=tenant, pk=uid)
                  .exclude(state=S.DELETED).select_related("location", "node").first() if uid else None)
        if volume is None:
            raise _unknown(entry["volume_id"])
        if volume.state == S.DELETING:
            raise Conflict(f"Volume '{volume.name}' is being deleted.")
        if location_ids and volume.location_id not in location_ids:
            raise InvalidInput("volumes", f"Volume '{volume.name}' is in {volume.location.slug}, which is not one of "
                               "the deployment's location_ids.", code="location_mismatch")
        if pinned_node_id is not None and volume.node_id is not None and volume.node_id != pinned_node_id:
            raise InvalidInput("volumes", f"Volume '{volume.name}' is on node {volume.node.hostname}, not on the node "
                               "the deployment is pinned to.", code="node_mismatch")
        others = (VolumeAttachment.objects.filter(volume=volume, deployment__deleted_at__isnull=True)
                  .exclude(deployment_id=deployment_id).select_related("deployment"))
        if volume.owner_deployment_id is not None and volume.owner_deployment_id != deployment_id \
                and volume.owner_deployment.deleted_at is None:
            raise Conflict(f"Volume '{volume.name}' is a per-replica volume of deployment "
                           f"{volume.owner_deployment.name}; it cannot be attached elsewhere while that deployment exists.")
        if entry["mode"] == RW:
            if replica_count > 1:
                raise InvalidInput("volumes", f"Volume '{volume.name}' is read-write: a read-write volume belongs to one "
                                   f"replica, and this deployment has replica_count {replica_count}. Mount it \"ro\", "
                                   "use one replica, or give each replica its own volume (size_gib without volume_id).",
                                   code="rw_shared")
            holder = others.first()
            if holder is not None:
                raise Conflict(f"Volume '{volume.name}' is attached to deployment {holder.deployment.name}; a read-write "
                               "volume belongs to one deployment at a time.", extra={"attached_to": holder.deployment.name})
        else:
            writer = others.filter(mode=RW).first()
            if writer is not None:
                raise Conflict(f"Volume '{volume.name}' is attached read-write to deployment {writer.deployment.name}; "
                               "detach it there before sharing it read-only.",
                               extra={"attached_to": writer.deployment.name})
        volumes.append(volume)
    located = {v.location_id for v in volumes}
    if len(located) > 1:
        raise InvalidInput("volumes", "The volumes are in different locations; a replica runs in one.",
                           code="location_mismatch")
    placed = {v.node_id for v in volumes if v.node_id is not None}
    if len(placed) > 1:
        raise InvalidInput("volumes", "The volumes are on different nodes; a replica runs on one.", code="node_mismatch")
    return volumes


def template_quota_check(*, tenant, deployment_id, template: dict | None, replica_count: int) -> None:
    """The per-replica volumes `replica_count` ordinals would make, under max_volume_gib.
    Caller holds the tenant lock."""
    if template is None:
        return
    made = set(Volume.objects.filter(owner_deployment_id=deployment_id).exclude(state=S.DELETED)
               .values_list("ordinal", flat=True)) if deployment_id else set()
    missing = sum(1 for ordinal in range(replica_count) if ordinal not in made)
    _quota_check(tenant=tenant, adding_gib=template["size_gib"] * missing)


def attachments_set(*, deployment, volumes: list[Volume], requested: Requested, actor) -> bool:
    """Makes the deployment's attachments and per-replica template what `requested` says (the
    caller checked it with attachments_check). True when anything a VM sees changed."""
    wanted = {str(v.pk): (v, e) for v, e in zip(volumes, requested.attach)}
    changed = False
    for attachment in list(VolumeAttachment.objects.filter(deployment=deployment).select_related("volume", "deployment")):
        entry = wanted.pop(str(attachment.volume_id), None)
        if entry is None:
            _detach(attachment, actor=actor)
            changed = True
        elif (attachment.mount_path, attachment.mode) != (entry[1]["mount_path"], entry[1]["mode"]):
            attachment.mount_path, attachment.mode = entry[1]["mount_path"], entry[1]["mode"]
            attachment.save(update_fields=["mount_path", "mode"])
            changed = True
    # Paths freed above are taken below: the (deployment, mount_path) constraint sees them in order.
    for volume, entry in wanted.values():
        VolumeAttachment.objects.create(volume=volume, deployment=deployment, mount_path=entry["mount_path"],
                                        mode=entry["mode"])
        _event(volume, "volume.attached", deployment_id=deployment.pk, deployment=deployment.name,
               mount_path=entry["mount_path"], mode=entry["mode"], actor=_actor(actor))
        changed = True
    current = selectors.template_of(deployment_id=deployment.pk)
    template = requested.template
    if template is None and current is not None:
        current.delete()
        changed = True
    elif template is not None:
        if current is None:
            VolumeTemplate.objects.create(deployment=deployment, **template)
            changed = True
        elif (current.size_gib, current.mount_path, current.keep) != (template["size_gib"], template["mount_path"],
                                                                      template["keep"]):
            # A volume already made keeps its size (no resize): a new size applies to new ordinals.
            current.size_gib, current.mount_path, current.keep = (template["size_gib"], template["mount_path"],
                                                                  template["keep"])
            current.save(update_fields=["size_gib", "mount_path", "keep"])
            Volume.objects.filter(owner_deployment=deployment).exclude(state=S.DELETED).update(keep=template["keep"])
            changed = True
    return changed


def deployment_volumes_release(*, deployment, actor) -> None:
    """The deployment is deleted: its attachments end, and its per-replica volumes are erased
    (unless kept: they stay as the tenant's volumes). An erase waits while a VM still holds the
    volume: the consumer sends it once none does (volumes_erasable).

    The attachment rows of a deleted deployment stay (nothing shows them): they are how a
    stopping VM of that deployment is still seen to hold the volume (volume_users)."""
    for attachment in VolumeAttachment.objects.filter(deployment=deployment).select_related("volume", "deployment"):
        _event(attachment.volume, "volume.detached", deployment_id=deployment.pk, deployment=deployment.name,
               actor=_actor(actor))
    for volume in Volume.objects.select_for_update().filter(owner_deployment=deployment).exclude(
            state__in=(S.DELETING, S.DELETED)):
        if volume.keep:
            _event(volume, "volume.detached", deployment_id=deployment.pk, deployment=deployment.name,
                   actor=_actor(actor))
            continue
        _erase(volume, reason="its deployment was deleted", actor=actor)
    VolumeTemplate.objects.filter(deployment=deployment).delete()


def volumes_erasable(*, node_id: int) -> list[str]:
    """The erases to send this node now: its volumes being deleted that no VM holds any more."""
    ids = selectors.volumes_erasing(node_id=node_id)
    if not ids:
        return []
    held = {str(v) for v in link.side().volumes_held(volume_ids=ids)}
    return [i for i in ids if i not in held]


# -- placement ----------------------------------------------------------------------------------


@dataclass
class Needs:
    """What one replica's volumes ask of its placement."""

    volumes: list[Volume]  # the volumes it mounts that exist (attached, and its own if made)
    exclusive: list[Volume]  # of those, the ones no other VM may hold while it runs (rw)
    node_id: int | None  # the node they live on, if any has one
    location_id: int | None  # the location they live in, if any
    new_gib: int  # GiB of volumes it would make on the node it goes to
    template: VolumeTemplate | None
    problem: str | None = None  # a reason it cannot be placed at all


def placement_needs(*, deployment_id, ordinal: int) -> Needs | None:
    """None when the deployment has no volumes (most of them: two cheap queries)."""
    attachments = selectors.attachments_of(deployment_id=deployment_id)
    template = selectors.template_of(deployment_id=deployment_id)
    if not attachments and template is None:
        return None
    volumes = [a.volume for a in attachments]
    exclusive = [a.volume for a in attachments if a.mode == RW]
    new_gib = 0
    if template is not None:
        own = selectors.owned_volume(deployment_id=deployment_id, ordinal=ordinal)
        if own is None:
            new_gib += template.size_gib
        else:
            volumes.append(own)
            exclusive.append(own)
    new_gib += sum(v.size_gib for v in volumes if v.node_id is None)
    nodes = {v.node_id for v in volumes if v.node_id is not None}
    locations = {v.location_id for v in volumes}
    problem = None
    if len(nodes) > 1 or len(locations) > 1:
        problem = "its volumes are on different nodes or in different locations; a replica runs on one node"
    if any(v.state in (S.DELETING, S.DELETED) for v in volumes):
        problem = "one of its volumes is being deleted"
    return Needs(volumes=volumes, exclusive=exclusive, node_id=min(nodes) if nodes else None,
                 location_id=min(locations) if locations else None, new_gib=new_gib, template=template,
                 problem=problem)


def placement_room(*, needs: Needs, node_ids: list[int]) -> dict[int, bool]:
    """{node id: has room for the replica's new volumes}."""
    if needs.new_gib == 0:
        return {node_id: True for node_id in node_ids}
    room = selectors.volume_room(node_ids=node_ids)
    return {node_id: room.get(node_id, -1) >= needs.new_gib for node_id in node_ids}


def placement_commit(*, needs: Needs, deployment, ordinal: int, node) -> bool:
    """The replica goes to `node`: its volumes without a node get that one, and its own
    per-replica volume is made there. False when another placement took the node's volume
    space meanwhile (nothing changed then). Caller holds the deployment's lock."""
    if needs.new_gib:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_SPACE_LOCK, node.pk])
        if selectors.volume_room(node_ids=[node.pk]).get(node.pk, -1) < needs.new_gib:
            return False
    unplaced = [v.pk for v in needs.volumes if v.node_id is None]
    if unplaced:
        Volume.objects.filter(pk__in=unplaced, node__isnull=True).update(node=node, state=S.READY)
    if needs.template is not None and not any(v.owner_deployment_id == deployment.pk for v in needs.volumes):
        volume = _owned_create(deployment=deployment, ordinal=ordinal, template=needs.template, node=node)
        needs.volumes.append(volume)
        needs.exclusive.append(volume)
    return True


def _owned_create(*, deployment, ordinal: int, template: VolumeTemplate, node) -> Volume:
    name = f"{deployment.name[:50]}-{ordinal}"
    if _name_taken(tenant=deployment.tenant, name=name):
        name = f"{deployment.name[:44]}-{ordinal}-{secrets.token_hex(2)}"
    try:
        with transaction.atomic():
            volume = Volume.objects.create(tenant_id=deployment.tenant_id, name=name, size_gib=template.size_gib,
                                           location_id=node.location_id, node=node, state=S.READY,
                                           owner_deployment=deployment, ordinal=ordinal, keep=template.keep)
    except IntegrityError:
        name = f"{deployment.name[:40]}-{ordinal}-{secrets.token_hex(4)}"
        volume = Volume.objects.create(tenant_id=deployment.tenant_id, name=name, size_gib=template.size_gib,
                                       location_id=node.location_id, node=node, state=S.READY,
                                       owner_deployment=deployment, ordinal=ordinal, keep=template.keep)
    billing_services.meter_volume_open(volume)
    _event(volume, "volume.created", deployment_id=deployment.pk, size_gib=volume.size_gib, ordinal=ordinal,
           node=node.hostname, per_replica=True)
    return volume


def mounts_for(*, deployment_id, ordinal: int) -> list[VolumeMount]:
    """The VolumeMounts a replica's spec carries: its deployment's attachments, and its
    ordinal's own volume (once placement made it)."""
    mounts = [VolumeMount(volume_id=str(a.volume_id), size_gib=a.volume.size_gib, mount_path=a.mount_path, mode=a.mode)
              for a in selectors.attachments_of(deployment_id=deployment_id)]
    template = selectors.template_of(deployment_id=deployment_id)
    if template is not None:
        own = selectors.owned_volume(deployment_id=deployment_id, ordinal=ordinal)
        if own is not None:
            mounts.append(VolumeMount(volume_id=str(own.pk), size_gib=own.size_gib, mount_path=template.mount_path,
                                      mode=RW))
    return mounts
