"""A tenant's persistent disks (DESIGN section 7, "Volumes"): a file on one node, formatted ext4
by that node's agent, attached to a replica's VM as a virtio block device.

A volume has no node until it is first attached: the scheduler picks one in its location with
room for it and for the replica, and from then on places that volume's replicas there only."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

MAX_VOLUMES_PER_DEPLOYMENT = 8


class Volume(models.Model):
    class State(models.TextChoices):
        # Made, no node yet: its file is created where its first replica is placed.
        PENDING = "pending"
        # Has a node (its file exists there, or is made by the next start there).
        READY = "ready"
        # Erase sent to its node; deleted once the node no longer lists it.
        DELETING = "deleting"
        DELETED = "deleted"

    class Mode(models.TextChoices):
        RW = "rw"
        RO = "ro"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="volumes")
    name = models.CharField(max_length=63)
    size_gib = models.PositiveIntegerField()
    location = models.ForeignKey("nodes.Location", on_delete=models.PROTECT, related_name="volumes")
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="volumes")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    # What the guest last said its filesystem holds; null until the guest channel reports it.
    used_bytes = models.BigIntegerField(null=True, blank=True)
    # A per-replica volume (a deployment's volume template): the deployment and ordinal it
    # belongs to, kept for that ordinal across restarts and scale down/up.
    owner_deployment = models.ForeignKey("deployments.Deployment", null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="owned_volumes")
    ordinal = models.PositiveSmallIntegerField(null=True, blank=True)
    keep = models.BooleanField(default=False, help_text="a per-replica volume outlives its deployment")
    created_at = models.DateTimeField(auto_now_add=True)
    # When its node's heartbeat first listed its file: until then its size is still to come out
    # of the node's free volume space, so placement counts it against that space itself.
    on_node_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], condition=~Q(state="deleted"),
                                    name="volume_unique_live_name_per_tenant"),
            models.UniqueConstraint(fields=["owner_deployment", "ordinal"],
                                    condition=Q(owner_deployment__isnull=False) & ~Q(state="deleted"),
                                    name="volume_one_per_deployment_ordinal"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size_gib} GiB)"


class VolumeAttachment(models.Model):
    """A volume named in a deployment's `volumes`: from the deployment's create (or the PATCH
    that adds it) until the deployment is deleted or drops it, running or stopped."""

    volume = models.ForeignKey(Volume, on_delete=models.PROTECT, related_name="attachments")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="volume_attachments")
    mount_path = models.CharField(max_length=255)
    mode = models.CharField(max_length=2, choices=Volume.Mode.choices, default=Volume.Mode.RW)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "volume"], name="attachment_volume_once_per_deployment"),
            models.UniqueConstraint(fields=["deployment", "mount_path"], name="attachment_one_volume_per_path"),
        ]


class VolumeTemplate(models.Model):
    """A deployment's per-replica volume (`{"size_gib", "mount_path", "keep"}` without a
    volume_id): each ordinal gets a Volume of its own (`owner_deployment`, `ordinal`) at its
    first placement, kept for that ordinal across restarts and scale down/up, as a StatefulSet's
    volume claim template does. One per deployment (a Volume is one per deployment and ordinal)."""

    deployment = models.OneToOneField("deployments.Deployment", on_delete=models.CASCADE,
                                      related_name="volume_template")
    size_gib = models.PositiveIntegerField()
    mount_path = models.CharField(max_length=255)
    keep = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
