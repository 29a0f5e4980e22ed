"""What the gateway needs of deployments (issue 25): endpoint keys, the gateways the plane pushes
to, the TCP ports it gives out, and the per-minute request counts it collects."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from cloud import crypto
from cloud.deployments.models.core import Deployment

class EndpointKey(models.Model):
    """A key to a private endpoint: sent as `Gantry-Key`, checked by the gateway against the
    hashes in its route table. The secret is shown once, at creation; only its sha256 is kept
    (a 256-bit random secret needs no slow hash), and its first characters as `prefix` so a
    customer can tell keys apart. Revoked keys stay as history and leave the table."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="endpoint_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=11)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The route table and the API read a deployment's live keys only.
            models.Index(fields=["deployment", "created_at"], condition=Q(revoked_at__isnull=True),
                         name="endpointkey_live_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Gateway(models.Model):
    """A gateway instance the plane pushes the route table to (`manage.py gateway_register`).
    Every registered gateway gets the same whole table; the last_* columns are what the last
    push found, for `GET /api/v1/system/status` and the admin."""

    name = models.SlugField(max_length=63, unique=True)
    control_url = models.CharField(max_length=300, help_text="The gateway's control address, e.g. http://10.0.0.5:9180")
    # The bearer token the gateway was started with (--token-file), encrypted like the other
    # secrets at rest (cloud/crypto.py); read only by the push.
    token_encrypted = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_push_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_digest = models.CharField(max_length=64, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def set_token(self, token: str) -> None:
        self.token_encrypted = crypto.encrypt(token)

    def get_token(self) -> str:
        return crypto.decrypt(self.token_encrypted)


class GatewayPort(models.Model):
    """A gateway port held by one TCP port of a deployment's `expose` (by its name), taken from
    GANTRY_GATEWAY_TCP_PORTS: the same on every gateway, kept while the deployment and that name
    exist (restarts and other PATCHes leave it alone, so clients keep working), and freed when
    either goes. A row is an allocation: freeing deletes it (services/expose.py)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="gateway_ports")
    name = models.CharField(max_length=15)
    port = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["port"]
        constraints = [
            models.UniqueConstraint(fields=["port"], name="gatewayport_unique_port"),
            models.UniqueConstraint(fields=["deployment", "name"], name="gatewayport_unique_name"),
            models.CheckConstraint(condition=Q(port__gte=1, port__lte=65535), name="gatewayport_port_range"),
        ]

    def __str__(self) -> str:
        return f"{self.port} ({self.name})"


LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
LATENCY_BUCKETS = (*(str(bound) for bound in LATENCY_BOUNDS_MS), "inf")


class RequestMinute(models.Model):
    """One gateway's count of one deployment's requests in one minute (issue 25), as its
    `GET /v1/stats` reported it (services/request_stats.py). The gateway keeps the last hour in
    memory and reports all of it on every collection, so a row is replaced, not added to; the
    API sums the gateways. Kept REQUEST_MINUTES_KEEP (2 days)."""

    # Their own indexes would repeat the leading columns of the constraint's and of the reads'.
    gateway = models.ForeignKey(Gateway, on_delete=models.CASCADE, related_name="+", db_index=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+", db_index=False)
    minute = models.DateTimeField(help_text="The minute's start (UTC)")
    requests = models.PositiveBigIntegerField()
    errors = models.PositiveBigIntegerField(help_text="answers of 500-599, the gateway's own 503s included")
    # {"1": n, "2": n, ... "60000": n, "inf": n}: requests whose total time (ms) was at most the
    # key and above the one before; requests the client abandoned are counted but not timed.
    latency_ms = models.JSONField()
    collected_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gateway", "deployment", "minute"], name="requestminute_unique"),
        ]
        indexes = [
            # The API reads one deployment's last hour; the purge deletes by minute.
            models.Index(fields=["deployment", "minute"], name="requestminute_deployment_idx"),
            models.Index(fields=["minute"], name="requestminute_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} @ {self.minute:%Y-%m-%d %H:%M} via {self.gateway_id}: {self.requests}"
