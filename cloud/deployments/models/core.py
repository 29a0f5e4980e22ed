"""Deployments, their replicas, their logs, their event feed and idempotency keys."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q

from cloud import crypto
from cloud.deployments.labels import MAX_LABEL_LENGTH, endpoint_label
from protocol.vocabulary import (
    DEPLOYMENT_STATUSES,
    DESIRED_STATES,
    ENDPOINT_ACCESSES,
    HEALTH_STATES,
    LOG_STREAMS,
    PENDING,
    REPLICA_STATES,
    RUN,
    TERMINAL_STATES,
    choices,
)


ENDPOINT_LABEL_CONSTRAINT = "deployment_unique_endpoint_label"

# What the gateway allows a route (issue 25): its request timeout and its largest request body.
DEFAULT_REQUEST_TIMEOUT_S = 600  # an LLM's long answer fits; a hung request does not hold a slot for ever
MAX_REQUEST_TIMEOUT_S = 86400
DEFAULT_MAX_REQUEST_BODY_MB = 1024
MAX_REQUEST_BODY_MB = 1048576  # 1 TiB: the gateway's own bound on max_body_bytes is 2**40


class EndpointLabelField(models.CharField):
    """Filled on insert from the row's name when its writer set none (fixtures, bulk inserts);
    deployment_create sets it itself, to retry on a collision. Never changed after."""

    def pre_save(self, model_instance, add):
        if add and not getattr(model_instance, self.attname):
            setattr(model_instance, self.attname, endpoint_label(model_instance.name))
        return super().pre_save(model_instance, add)


class Deployment(models.Model):
    Status = models.TextChoices("Status", choices(DEPLOYMENT_STATUSES), qualname="Deployment.Status")
    Access = models.TextChoices("Access", choices(ENDPOINT_ACCESSES), qualname="Deployment.Access")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    # The gateway's name for it (cloud/deployments/labels.py): unique over all rows, deleted ones
    # too, so a name once given out never reaches another deployment.
    endpoint_label = EndpointLabelField(max_length=MAX_LABEL_LENGTH, editable=False)
    template = models.ForeignKey("catalog.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="deployments")
    image = models.CharField(max_length=512)
    registry_username = models.CharField(max_length=200, blank=True)
    registry_secret_encrypted = models.TextField(blank=True, editable=False)
    env = models.JSONField(default=dict, blank=True)
    secret_env_encrypted = models.TextField(blank=True, editable=False)
    # Only the names: what the API and admin may show without decrypting anything.
    secret_env_keys = models.JSONField(default=list, blank=True, editable=False)
    entrypoint = models.JSONField(null=True, blank=True)
    args = models.JSONField(null=True, blank=True)
    traffic_port = models.PositiveIntegerField(null=True, blank=True)
    # What the node's health check GETs on traffic_port (an answer of 500 or more fails it); blank: a
    # TCP connect. The template's at create, or the customer's own (protocol.vocabulary.HEALTH_PATH_RE).
    health_check_path = models.CharField(max_length=256, blank=True, default="")
    # Private: the gateway answers only requests carrying one of its live endpoint keys.
    # Rows from before issue 25 were migrated to public (their direct endpoints were open).
    endpoint_access = models.CharField(max_length=7, choices=Access.choices, default=Access.PRIVATE)
    request_timeout_s = models.PositiveIntegerField(default=DEFAULT_REQUEST_TIMEOUT_S)
    max_request_body_mb = models.PositiveIntegerField(default=DEFAULT_MAX_REQUEST_BODY_MB)
    # Ports beside traffic_port (`expose`): [{"name", "port", "protocol": "http" | "tcp"}], as the
    # API validated them (services/expose.py). Each HTTP one is served at <label>-<name>.<domain>,
    # each TCP one on a gateway port of its own (GatewayPort).
    expose = models.JSONField(default=list, blank=True)
    # A TCP port carries no endpoint key, so it is open to anyone whatever endpoint_access says:
    # a private deployment gets one only when its owner says so.
    allow_public_tcp = models.BooleanField(default=False)
    gpus_per_container = models.PositiveSmallIntegerField()
    hardware_type = models.ForeignKey("nodes.HardwareType", on_delete=models.PROTECT, related_name="deployments")
    locations = models.ManyToManyField("nodes.Location", blank=True, related_name="deployments")
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="pinned_deployments")
    replica_count = models.PositiveSmallIntegerField(default=1)
    duration_hours = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4, help_text="locked in at creation")
    # Not read since issue 18: the API's total_cost is billing's meters plus what accrues
    # (billing.selectors.deployment_cost_annotations). Dropping the column is a deployments
    # migration, left to be made when no other change to this app is in flight.
    total_cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # How long a stopping replica's workload gets between ACPI power-off and the kill.
    stop_grace_seconds = models.PositiveSmallIntegerField(default=10)
    # DELETE hides a deployment (404 from then on, its name free again) but keeps the row:
    # usage and ledger rows PROTECT it (billing), and a statement must not lose what was metered.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the rolling restart in progress began (services/rolling.py); null when none is. An
    # incarnation placed since then runs the new spec; the restart is over once every live one does.
    rolling_restart_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"], condition=Q(deleted_at__isnull=True), name="deployment_unique_tenant_name"
            ),
            models.UniqueConstraint(fields=["endpoint_label"], name=ENDPOINT_LABEL_CONSTRAINT),
            # The gateway validates what it is sent: a row outside these bounds would make it
            # refuse the whole table, every tenant's routes with it.
            models.CheckConstraint(condition=Q(endpoint_access__in=ENDPOINT_ACCESSES), name="deployment_endpoint_access"),
            models.CheckConstraint(condition=Q(request_timeout_s__gte=1, request_timeout_s__lte=MAX_REQUEST_TIMEOUT_S),
                                   name="deployment_request_timeout_range"),
            models.CheckConstraint(condition=Q(max_request_body_mb__gte=1, max_request_body_mb__lte=MAX_REQUEST_BODY_MB),
                                   name="deployment_max_request_body_range"),
        ]
        indexes = [
            # The list endpoint: one tenant, newest first, optionally by status; deleted rows
            # are never listed, so they stay out of the index too.
            models.Index(
                fields=["tenant", "-created_at", "-id"], condition=Q(deleted_at__isnull=True),
                name="deployment_tenant_recent_idx",
            ),
            models.Index(
                fields=["tenant", "status", "-created_at"], condition=Q(deleted_at__isnull=True),
                name="deployment_tenant_status_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    # Secrets are written through these setters and only read by the code that builds the
    # agent's replica.start message; nothing else decrypts them.
    def set_secret_env(self, values: dict[str, str]) -> None:
        self.secret_env_encrypted = crypto.encrypt_json(values) if values else ""
        self.secret_env_keys = sorted(values)

    def get_secret_env(self) -> dict[str, str]:
        return crypto.decrypt_json(self.secret_env_encrypted) or {}

    def set_registry_secret(self, secret: str | None) -> None:
        self.registry_secret_encrypted = crypto.encrypt(secret) if secret else ""

    def get_registry_secret(self) -> str | None:
        return crypto.decrypt(self.registry_secret_encrypted) if self.registry_secret_encrypted else None

    @property
    def gpus_total(self) -> int:
        return self.gpus_per_container * self.replica_count


# How a pending replica's reason begins when no node has room for it (services/placement.py
# writes them): the route table's "no capacity" is read from these.
SHORTAGE_PREFIXES = ("no capacity: ", "pinned to node ")


class Replica(models.Model):
    """One incarnation: one placement of one ordinal on one node, from `pending` to a terminal
    state. Start after stop, restart, and re-placement after a lost node make a new row for the
    same ordinal (`generation` + 1); the old row stays, with its logs and usage, as history.

    `desired` is what the plane wants (run|stop); `state`, `reason`, address, host port, exit
    code are what the node last reported. The VM on the node is named after `uid`, so two
    incarnations (or two control planes' databases) can never be confused.
    """

    State = models.TextChoices("State", choices(REPLICA_STATES), qualname="Replica.State")

    Desired = models.TextChoices("Desired", choices(DESIRED_STATES), qualname="Replica.Desired")

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    ordinal = models.PositiveSmallIntegerField()
    generation = models.PositiveIntegerField(default=1)
    desired = models.CharField(max_length=4, choices=Desired.choices, default=Desired.RUN)
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="replicas")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    # Every non-running replica says why: "no capacity of 8x H100 in us-east", "pulling 312/870 MB".
    reason = models.CharField(max_length=500, blank=True)
    vm_address = models.GenericIPAddressField(null=True, blank=True)
    host_port = models.PositiveIntegerField(null=True, blank=True)
    # Every port its node published, {"<guest port>": host port}, traffic_port's included; empty
    # from an agent older than `expose` (which publishes the traffic port alone).
    host_ports = models.JSONField(default=dict, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    # "failing" while its node's health check fails (its last report): out of the gateway's pool.
    health = models.CharField(max_length=7, blank=True, default="",
                              choices=[(value, value or "passing") for value in HEALTH_STATES])
    # Its successor (a rolling restart's or a node drain's): this row keeps serving until
    # `replaced_by` is up (or room must be made, or the node's drain times out), and meanwhile
    # does not count as its ordinal's live replica.
    replaced_by = models.OneToOneField("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces")
    # Stopping, but its node keeps the VM running until then: it left the gateway's pool at the
    # stop, and requests already on it finish (services/drain.py). Cleared when the drain ends.
    drain_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    placed_at = models.DateTimeField(null=True, blank=True)
    # When its VM process started (the first report of `booting` or later): billing meters from
    # here, as start-up holds the GPUs as much as running does.
    booted_at = models.DateTimeField(null=True, blank=True)
    # When it first entered `running`.
    started_at = models.DateTimeField(null=True, blank=True)
    # When its VM ended (its node's report, or the node's last heartbeat when it was lost):
    # billing meters up to here. Null for an incarnation that never booted.
    stopped_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="when it reached a terminal state")
    # The node still holds its VM (GPUs stay allocated) until the node says the VM is gone.
    vm_gone = models.BooleanField(default=False)
    last_report_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment_id", "ordinal", "generation"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "ordinal", "generation"], name="replica_unique_incarnation"),
            # The live set: at most one wanted, unfinished, unreplaced incarnation per ordinal.
            models.UniqueConstraint(
                fields=["deployment", "ordinal"],
                condition=Q(desired=RUN, replaced_by__isnull=True) & ~Q(state__in=TERMINAL_STATES),
                name="replica_one_live_per_ordinal",
            ),
        ]
        indexes = [
            models.Index(fields=["node", "state"], name="replica_node_state_idx"),
            models.Index(fields=["state", "created_at"], condition=Q(node__isnull=True, state=PENDING),
                         name="replica_unplaced_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}-{self.ordinal}.{self.generation}"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class LogLine(models.Model):
    """One line of a replica incarnation's log.

    The id is the line's cursor: lines of one deployment are inserted under a per-deployment
    lock held to commit (services/logs.py), so ids grow in commit order within a deployment and
    "every line after cursor C" never misses one that commits later with a smaller id.
    """

    Stream = models.TextChoices("Stream", choices(LOG_STREAMS), qualname="LogLine.Stream")

    # No database-level constraint or index on either key: checking two foreign keys per line was
    # two thirds of PostgreSQL's cost of storing a log line (Django's are deferred, so each batch's
    # commit ran thousands of checks), and the indexes below already lead with each key. Lines are
    # written only by services/logs.py, for a replica it has just read; the ORM still applies
    # on_delete (docs/architecture.md, "Log lines carry no foreign-key constraints").
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="log_lines",
                                   db_constraint=False, db_index=False)
    # PROTECT: an incarnation that wrote logs is history and is never deleted with its lines.
    replica = models.ForeignKey(Replica, on_delete=models.PROTECT, related_name="log_lines",
                                db_constraint=False, db_index=False)
    # Numbered by the agent per replica: a resend after a reconnect hits the unique key and is
    # dropped; a missing number is a visible gap, never a silent loss. Null for a line the
    # plane wrote itself (a `system` line saying, for instance, how many lines were lost).
    seq = models.PositiveBigIntegerField(null=True, blank=True)
    ts = models.DateTimeField()
    stream = models.CharField(max_length=6, choices=Stream.choices)
    message = models.TextField()
    # The line goes on in the next one of its stream (a line over 64 KiB is stored in pieces).
    continued = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["replica", "seq"], name="logline_unique_replica_seq")]
        indexes = [
            # Every read of a deployment's log pages by cursor: tail, after, before, live catch-up.
            models.Index(fields=["deployment", "id"], name="logline_deployment_cursor_idx"),
            # Retention deletes by age across all deployments; lines arrive in time order, so a
            # BRIN index is a few pages where a btree would cost every one of 20,000 inserts/s.
            BrinIndex(fields=["ts"], name="logline_ts_brin"),
        ]


class Event(models.Model):
    """Something that happened to a deployment (the SSE feed and the events list).

    The id is the cursor, and it follows commit order: a deferred trigger (migration 0005)
    renumbers a transaction's events at its commit, under one lock, so a follower reading
    "after id N" never skips an event committed later with a smaller id.
    """

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="events")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=50)
    payload = models.JSONField(default=dict, blank=True)
    ts = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["deployment", "id"], name="event_deployment_idx"),
            models.Index(fields=["tenant", "id"], name="event_tenant_cursor_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} @ {self.ts:%Y-%m-%d %H:%M:%S}"


class IdempotencyKey(models.Model):
    """The first answer to a POST made with an `Idempotency-Key` header, per tenant.

    The fingerprint of the request body is kept too, so the same key reused with a different
    body is a 409 rather than a silent replay of an unrelated deployment.
    """

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    deployment = models.ForeignKey(Deployment, null=True, on_delete=models.SET_NULL, related_name="+")
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_unique_tenant_key")]


# The upper bounds (ms) of the gateway's latency histogram (docs/gateway.md, "Control API"), as
# its `GET /v1/stats` names them: the last bucket is unbounded.
