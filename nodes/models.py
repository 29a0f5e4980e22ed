"""The fleet: regions, kinds of GPU server, the servers themselves and their GPUs.

Integer ids for Location and HardwareType are part of the API: io.net's deploy request names
them as `hardware_id` and `location_ids` integers, and customers keep those numbers in scripts.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models


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

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    class Status(models.TextChoices):
        JOINING = "joining"
        ONLINE = "online"
        CORDONED = "cordoned"
        DRAINING = "draining"
        OFFLINE = "offline"

    hostname = models.CharField(max_length=253, unique=True)
    location = models.ForeignKey(Location, on_delete=models.PROTECT, related_name="nodes")
    hardware_type = models.ForeignKey(HardwareType, on_delete=models.PROTECT, related_name="nodes")
    public_address = models.GenericIPAddressField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.JOINING, db_index=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=50, blank=True)
    # `gnode_<id>_<secret>`: only a hash is kept (the agent-protocol issue issues and checks them).
    credential_hash = models.CharField(max_length=128, blank=True)
    # Presents GPUs from a fake sysfs tree (--simulate-gpus): shown wherever a node is shown.
    simulated = models.BooleanField(default=False)
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
