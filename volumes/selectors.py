"""Reads of volumes: the tenant-scoped ones the API and the dashboard use, and the fleet-side
ones placement and the agent consumer use (a node's room for new volumes, what it must erase)."""

from __future__ import annotations


from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import CharField, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Cast, JSONObject

from cloud.exceptions import NotFound
from cloud.validators import as_uuid
from nodes import selectors as node_selectors
from volumes.models import Volume, VolumeAttachment, VolumeTemplate

S = Volume.State


def _attachments() -> Prefetch:
    # A deleted deployment's rows stay (services.deployment_volumes_release) but attach nothing.
    return Prefetch("attachments", queryset=VolumeAttachment.objects.filter(deployment__deleted_at__isnull=True)
                    .select_related("deployment").order_by("id"))


def volumes_for(*, tenant) -> QuerySet[Volume]:
    """The tenant's volumes that are not yet deleted, newest first, with what they attach to."""
    return (Volume.objects.filter(tenant=tenant).exclude(state=S.DELETED)
            .select_related("location", "node").prefetch_related(_attachments()).order_by("-created_at", "id"))


def volume_get(*, tenant, volume_id) -> Volume:
    """One of the tenant's volumes; another tenant's, a deleted one or a malformed id is the same
    404 (nothing says a volume of that id exists)."""
    uid = as_uuid(volume_id)
    volume = volumes_for(tenant=tenant).filter(pk=uid).first() if uid else None
    if volume is None:
        raise NotFound(f"No volume {str(volume_id)[:40]}.")
    return volume


def volume_used_gib(*, tenant) -> int:
    """GiB provisioned by the tenant's volumes not yet deleted (the `max_volume_gib` quota)."""
    return Volume.objects.filter(tenant=tenant).exclude(state=S.DELETED).aggregate(s=Sum("size_gib"))["s"] or 0


def volume_room(*, node_ids) -> dict[int, float]:
    """{node id: GiB a new volume may take there}: what the node's last heartbeat said is free
    for volumes, less the volumes placed there whose files it has not listed yet (made at their
    replica's first start). A node whose agent keeps no volumes is left out."""
    free = node_selectors.free_volume_gib(node_ids=node_ids)
    unmade = dict(Volume.objects.filter(node_id__in=list(free), on_node_at__isnull=True, state=S.READY)
                  .values("node_id").annotate(s=Sum("size_gib")).values_list("node_id", "s"))
    return {node_id: gib - unmade.get(node_id, 0) for node_id, gib in free.items()}


def volumes_erasing(*, node_id: int) -> list[str]:
    """Ids of the volumes on this node whose erase was asked for, to send (again) as
    `volume.delete`."""
    return [str(pk) for pk in Volume.objects.filter(node_id=node_id, state=S.DELETING).order_by("pk")
            .values_list("pk", flat=True)]


def attachments_of(*, deployment_id) -> list[VolumeAttachment]:
    return list(VolumeAttachment.objects.filter(deployment_id=deployment_id).select_related("volume__node")
                .order_by("mount_path"))


def template_of(*, deployment_id) -> VolumeTemplate | None:
    return VolumeTemplate.objects.filter(deployment_id=deployment_id).first()


def owned_volume(*, deployment_id, ordinal: int) -> Volume | None:
    """The per-replica volume of one ordinal, if it was made."""
    return (Volume.objects.filter(owner_deployment_id=deployment_id, ordinal=ordinal).exclude(state=S.DELETED)
            .select_related("node").first())


def volumes_on_node_of(*, node_id: int) -> dict[str, list[str]]:
    """{volume name: [deployment names]} of the volumes on a node that keep deployments there
    (attached, or a deployment's own per-replica volume): what a drain of that node tells."""
    out: dict[str, list[str]] = {}
    volumes = (Volume.objects.filter(node_id=node_id).exclude(state__in=(S.DELETING, S.DELETED))
               .select_related("owner_deployment").prefetch_related(_attachments()).order_by("name"))
    for volume in volumes:
        names = [a.deployment.name for a in volume.attachments.all() if a.deployment.deleted_at is None]
        if volume.owner_deployment is not None and volume.owner_deployment.deleted_at is None:
            names.append(volume.owner_deployment.name)
        if names:
            out[volume.name] = sorted(set(names))
    return out


def volumes_of_deployment(*, deployment_id) -> QuerySet[Volume]:
    """Every live volume a deployment uses: attached ones and its per-replica ones."""
    return (Volume.objects.filter(Q(attachments__deployment_id=deployment_id) | Q(owner_deployment_id=deployment_id))
            .exclude(state=S.DELETED).distinct().select_related("node").order_by("name"))


def volume_users(*, volume_ids, writers_only: bool = False) -> list[tuple[str, object, int | None]]:
    """(volume id, deployment id, ordinal or None) for each deployment that mounts one of these
    volumes: attached (every ordinal), or its own per-replica volume (that ordinal only, always
    read-write). `writers_only`: the deployments that mount it read-write."""
    ids = [uid for v in volume_ids if (uid := as_uuid(v)) is not None]
    attachments = VolumeAttachment.objects.filter(volume_id__in=ids)
    if writers_only:
        attachments = attachments.filter(mode=Volume.Mode.RW)
    rows = [(str(v), d, None) for v, d in attachments.values_list("volume_id", "deployment_id")]
    rows += [(str(v), d, o) for v, d, o in Volume.objects.filter(pk__in=ids, owner_deployment__isnull=False)
             .values_list("pk", "owner_deployment_id", "ordinal")]
    return rows


def deployment_volumes_annotations() -> dict:
    """Annotations that give each deployment row its volumes in the same query (the list
    endpoint's one query): `volume_list`, the attached ones, and `volume_template_json`, its
    per-replica template or null."""
    return {
        "volume_list": ArraySubquery(
            VolumeAttachment.objects.filter(deployment_id=OuterRef("pk")).order_by("mount_path")
            .values(json=JSONObject(volume_id=Cast("volume_id", CharField()), name="volume__name",
                                    size_gib="volume__size_gib", mount_path="mount_path", mode="mode"))),
        "volume_template_json": Subquery(
            VolumeTemplate.objects.filter(deployment_id=OuterRef("pk"))
            .values(json=JSONObject(size_gib="size_gib", mount_path="mount_path", keep="keep"))[:1]),
    }
