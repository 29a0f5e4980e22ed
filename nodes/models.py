"""The fleet: regions, kinds of GPU server, the servers themselves and their GPUs.

Integer ids for Location and HardwareType are part of the API: io.net's deploy request names
them as `hardware_id` and `location_ids` integers, and customers keep those numbers in scripts.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models

from protocol.vocabulary import NODE_STATUSES, choices


class Location(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.slug


class HardwareType(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100, help_text="e.g. 8x H100 80GB SXM")
    gpu_model = models.CharField(max_length=100)
    gpu_memory_gib = models.PositiveIntegerField()
    gpus_per_node = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    allowed_gpu_counts = ArrayField(models.PositiveSmallIntegerField(), help_text="GPUs per replica a customer may ask for")
    vcpus_per_gpu = models.PositiveSmallIntegerField()
    memory_gib_per_gpu = models.PositiveIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(Decimal("0"))])
    # A CPU-only kind (gpus_per_node counts "slots") lets the tiny `hello` image run on a node
    # with no GPU at all, at its own price.
    cpu_only = models.BooleanField(default=False)

    class Interconnect(models.TextChoices):
        PCIE = "pcie", "PCIe cards"
        NVSWITCH = "nvswitch", "NVSwitch baseboard (HGX)"

    # On an NVSwitch board a VM gets one GPU or the whole board (docs/hardware.md): the API
    # explains a count in between with this.
    interconnect = models.CharField(max_length=10, choices=Interconnect.choices, default=Interconnect.PCIE)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    Status = models.TextChoices("Status", choices(NODE_STATUSES), qualname="Node.Status")

    hostname = models.CharField(max_length=253, unique=True)
    location = models.ForeignKey(Location, on_delete=models.PROTECT, related_name="nodes")
    hardware_type = models.ForeignKey(HardwareType, on_delete=models.PROTECT, related_name="nodes")
    # Endpoints are http://<public_address>:<host port>. Several nodes may share one address
    # (a single test machine running several agents), so it is not unique.
    public_address = models.GenericIPAddressField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.JOINING, db_index=True)
    status_reason = models.CharField(max_length=300, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=50, blank=True)
    protocol_version = models.PositiveSmallIntegerField(null=True, blank=True)
    # `gnode_<id>_<secret>`: only a SHA-256 of the secret is kept. The secret is 256 random
    # bits, so a fast hash is as good as a slow one and keeps every agent message cheap to check.
    credential_hash = models.CharField(max_length=128, blank=True)
    credential_issued_at = models.DateTimeField(null=True, blank=True)
    # What the agent reported about itself at join and on every hello (never typed in).
    cpus = models.PositiveIntegerField(default=0)
    memory_mib = models.PositiveBigIntegerField(default=0)
    disk_gib = models.PositiveIntegerField(default=0)
    accelerator = models.CharField(max_length=10, blank=True)
    inventory = models.JSONField(default=dict, blank=True)
    # Presents GPUs from a fake sysfs tree (--simulate-gpus), as its agent says: shown wherever
    # a node is shown, never an operator's choice.
    simulated = models.BooleanField(default=False)
    # The agent's preflight (kept whole in `inventory`): can its GPUs be passed through to VMs?
    # A node that cannot is never given a GPU replica; the reason says what to change. True
    # until an agent says otherwise: a node has no Gpu rows before its first inventory anyway,
    # and nodes of agents from before preflight keep being scheduled as they were.
    gpu_passthrough = models.BooleanField(default=True)
    gpu_passthrough_reason = models.CharField(max_length=500, blank=True)
    # While draining: when the old replicas are stopped even if their replacements never ran.
    drain_deadline = models.DateTimeField(null=True, blank=True)
    # The space its agent's volume directory has left for new volumes (its last heartbeat);
    # null from an agent that keeps no volumes, and then no new volume is placed there.
    free_volume_gib = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} (simulated)" if self.simulated else self.hostname


class Gpu(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=64, unique=True)
    pci_bdf = models.CharField(max_length=16, help_text="PCI address, e.g. 0000:18:00.0")
    model = models.CharField(max_length=100)
    memory_mib = models.PositiveIntegerField()
    numa_node = models.SmallIntegerField(default=0)
    nvlink_domain = models.CharField(max_length=64, blank=True)
    iommu_group = models.PositiveIntegerField(null=True, blank=True)

    class Health(models.TextChoices):
        OK = "ok"
        OUT = "out", "out of service"

    # As the agent last said (inventory and heartbeats): an XID or uncorrectable ECC error, a
    # failed reset between tenants, a group that cannot be passed through, or a host process
    # holding the GPU. Only `ok` GPUs are scheduled; the reason is shown to operators.
    health = models.CharField(max_length=3, choices=Health.choices, default=Health.OK)
    health_reason = models.CharField(max_length=500, blank=True)
    # Null means free. The scheduler claims rows with SELECT ... FOR UPDATE SKIP LOCKED.
    replica = models.ForeignKey(
        "deployments.Replica", null=True, blank=True, on_delete=models.SET_NULL, related_name="gpus"
    )

    class Meta:
        ordering = ["node_id", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_unique_node_index")]
        indexes = [models.Index(fields=["node", "replica"], name="gpu_node_free_idx")]

    def __str__(self) -> str:
        return f"{self.node.hostname}#{self.index}"


class CpuSlot(models.Model):
    """One replica's room on a `cpu_only` node (HardwareType.gpus_per_node counts them). Slots
    are rows, like GPUs, so the scheduler claims both the same way (FOR UPDATE SKIP LOCKED)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="slots")
    index = models.PositiveSmallIntegerField()
    replica = models.ForeignKey(
        "deployments.Replica", null=True, blank=True, on_delete=models.SET_NULL, related_name="slots"
    )

    class Meta:
        ordering = ["node_id", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="slot_unique_node_index")]
        indexes = [models.Index(fields=["node", "replica"], name="slot_node_free_idx")]

    def __str__(self) -> str:
        return f"{self.node.hostname}/slot{self.index}"


class JoinToken(models.Model):
    """A one-time token an operator hands to a new node (`create_node`); only its hash is kept."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="join_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class NodeEvent(models.Model):
    """Something a node did that an operator should see and the node's own status does not say:
    a report refused because it named what belongs to another node (issue 23). Written by
    `nodes.services` only, outside the refused transaction, so the refusal keeps its record."""

    class Kind(models.TextChoices):
        INVENTORY_REFUSED = "inventory_refused", "inventory refused"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40, choices=Kind.choices)
    message = models.CharField(max_length=500)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["node", "-created_at"], name="nodeevent_node_recent_idx")]

    def __str__(self) -> str:
        return f"{self.node_id} {self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"
