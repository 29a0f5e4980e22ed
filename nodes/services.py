"""Every write to the fleet: creating nodes, joining, credentials, what agents report about
themselves, cordon / drain / uncordon, and liveness. The admin, the management commands, the
staff API and the agent consumer all call these functions.

Replicas are the deployments app's business (it imports this one, never the reverse): where a
node change affects replicas (a drain, a node gone silent), this module changes the node and
the caller — `cloud/deployments/services/placement.py` — moves the replicas.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from cloud.exceptions import Conflict, InvalidInput
from cloud.upsert import row_upsert
from nodes import link
# This module is the app's write API; two concepts are written in modules of their own and
# called through it: what a node says it has (inventory) and the scheduler's claims (units).
from nodes.inventory import InventoryRefused, gpus_health, gpus_sync, inventory_apply, slots_sync  # noqa: F401
from nodes.models import HardwareType, JoinToken, Location, Node, NodeEvent
from nodes.units import units_claim, units_free  # noqa: F401
from protocol.wire import PROTOCOL_VERSION, Inventory

# -- written by templates' load_catalog and billing's price book ----------------------------------


def location_upsert(*, slug: str, defaults: dict) -> str:
    """For `load_catalog`: "created", "updated" or "unchanged"."""
    return row_upsert(Location.objects.filter(slug=slug).first(),
                      make=lambda **fields: Location(slug=slug, **fields), defaults=defaults)[1]


def hardware_type_upsert(*, slug: str, defaults: dict, on_create_only: tuple[str, ...] = ()) -> str:
    """For `load_catalog`: "created", "updated" or "unchanged"."""
    return row_upsert(HardwareType.objects.filter(slug=slug).first(),
                      make=lambda **fields: HardwareType(slug=slug, **fields), defaults=defaults,
                      on_create_only=on_create_only)[1]


def hardware_list_prices_follow(current) -> int:
    """Sets each hardware type's catalog list price to `current` (an expression over the type's
    row, billing's every-location price in effect) where that is not null and differs: one
    UPDATE. Billing's price book is the only caller."""
    return (HardwareType.objects.annotate(current=current).filter(current__isnull=False)
            .exclude(price_per_gpu_hour=F("current")).update(price_per_gpu_hour=current))

log = logging.getLogger(__name__)

JOIN_TOKEN_TTL = timedelta(hours=1)
CREDENTIAL_PREFIX = "gnode_"
JOIN_TOKEN_PREFIX = "gjoin_"


class JoinRefused(Exception):
    """A join token that is wrong, used or expired; the message is safe to show the agent."""


# A node that repeats a refused report (on every reconnect, or in a loop on one socket) adds no
# row until this has passed since its last identical one: a lying node cannot fill the table.
NODE_EVENT_REPEAT = timedelta(minutes=10)


def node_event_record(*, node_id: int, kind: str, message: str, detail: dict | None = None) -> NodeEvent | None:
    """Records an event for operators; None when the node said the same within NODE_EVENT_REPEAT."""
    message = message[:500]
    if NodeEvent.objects.filter(node_id=node_id, kind=kind, message=message,
                                created_at__gte=timezone.now() - NODE_EVENT_REPEAT).exists():
        return None
    return NodeEvent.objects.create(node_id=node_id, kind=kind, message=message, detail=detail or {})


def _records_refusals(service):
    """Put outside `transaction.atomic`: the refused transaction rolls back first, then the
    refusal is recorded for operators, then it propagates to the caller (which answers the agent)."""

    @functools.wraps(service)
    def wrapper(*args, **kwargs):
        try:
            return service(*args, **kwargs)
        except InventoryRefused as refused:
            log.warning("%s", refused.for_operators)
            node_event_record(node_id=refused.node_id, kind=NodeEvent.Kind.INVENTORY_REFUSED,
                              message=refused.for_operators, detail=refused.detail)
            raise

    return wrapper


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _by_id_or_slug(model, ref, field: str):
    text = str(ref).strip()
    row = model.objects.filter(pk=int(text)).first() if text.isdigit() else model.objects.filter(slug=text).first()
    if row is None:
        raise InvalidInput(field, f"No {model._meta.verbose_name} '{text[:60]}'.", code="unknown")
    return row


# -- creating and joining -----------------------------------------------------------------------


@dataclass(frozen=True)
class NewNode:
    node: Node
    join_token: str
    expires_at: object

    def as_json(self) -> dict:
        return {
            "node_id": self.node.pk, "hostname": self.node.hostname, "join_token": self.join_token,
            "expires_at": self.expires_at.isoformat(),
            "join_command": f"gantry-agent join --url <control plane URL> --token {self.join_token}",
        }


@transaction.atomic
def node_create(*, hostname: str, hardware_type, location, public_address: str | None = None) -> NewNode:
    """A node row in `joining` and a one-time join token for it (shown once)."""
    hostname = (hostname or "").strip()
    if not hostname or len(hostname) > 253:
        raise InvalidInput("hostname", "Give a hostname of 1 to 253 characters.", code="invalid")
    if Node.objects.filter(hostname=hostname).exists():
        raise Conflict(f"A node named '{hostname}' already exists.")
    hardware = hardware_type if isinstance(hardware_type, HardwareType) else _by_id_or_slug(HardwareType, hardware_type, "hardware_type")
    place = location if isinstance(location, Location) else _by_id_or_slug(Location, location, "location")
    node = Node.objects.create(hostname=hostname, hardware_type=hardware, location=place,
                               public_address=public_address_clean(public_address), status=Node.Status.JOINING,
                               status_reason="waiting for its agent to join")
    token, expires_at = _issue_join_token(node)
    return NewNode(node=node, join_token=token, expires_at=expires_at)


def public_address_clean(public_address) -> str | None:
    """The address customers' endpoints are built on (http://<address>:<host port>), in its
    canonical spelling, or None for none; InvalidInput when it is not an IP address."""
    if not public_address:
        return None
    try:
        return str(ipaddress.ip_address(str(public_address).strip()))
    except ValueError:
        raise InvalidInput("public_address", f"'{str(public_address)[:60]}' is not an IP address.", code="invalid") from None


@transaction.atomic
def node_set_public_address(*, node_id: int, public_address) -> Node:
    """A new address for the node's endpoints (None: none). Every running replica's endpoint
    moves with it at once: the deployments API reads the address live, nothing caches it."""
    address = public_address_clean(public_address)
    node = _for_update(node_id)
    if address != node.public_address:
        node.public_address = address
        node.save(update_fields=["public_address"])
    return node


def _issue_join_token(node: Node) -> tuple[str, object]:
    token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + JOIN_TOKEN_TTL
    JoinToken.objects.create(node=node, token_hash=_digest(token), expires_at=expires_at)
    return token, expires_at


@transaction.atomic
def join_token_reissue(*, node: Node) -> NewNode:
    """A fresh join token for an existing node (a rebuilt host re-joins under its old name);
    earlier unused tokens stop working."""
    JoinToken.objects.filter(node=node, used_at__isnull=True).update(expires_at=timezone.now())
    token, expires_at = _issue_join_token(node)
    return NewNode(node=node, join_token=token, expires_at=expires_at)


@_records_refusals
@transaction.atomic
def node_join(*, token: str, inventory: Inventory) -> tuple[Node, str]:
    """Trades a join token for the node's long-lived credential and records its inventory.
    The credential replaces any earlier one (a re-join revokes the old agent)."""
    row = (
        JoinToken.objects.select_for_update().select_related("node")
        .filter(token_hash=_digest(token or "")).first()
    )
    now = timezone.now()
    if row is None:
        raise JoinRefused("join token not recognised: ask the operator for a new one (manage.py create_node)")
    if row.used_at is not None:
        raise JoinRefused("join token already used: each token joins one node once; issue a new one")
    if row.expires_at <= now:
        raise JoinRefused(f"join token expired at {row.expires_at:%Y-%m-%dT%H:%M:%SZ}; issue a new one")
    row.used_at = now
    row.save(update_fields=["used_at"])
    node = Node.objects.select_for_update().get(pk=row.node_id)
    secret = secrets.token_urlsafe(32)
    node.credential_hash = _digest(secret)
    node.credential_issued_at = now
    inventory_apply(node, inventory)
    node.status_reason = "joined: waiting for its agent to connect"
    node.save()
    slots_sync(node=node)
    gpus_sync(node=node, gpus=inventory.gpus)
    link.disconnect_node(node.pk)  # an agent still holding the old credential is cut off
    return node, f"{CREDENTIAL_PREFIX}{node.pk}_{secret}"


def node_authenticate(credential: str) -> Node | None:
    """The node a credential belongs to, or None (wrong, revoked, or not a credential)."""
    if not credential or not credential.startswith(CREDENTIAL_PREFIX):
        return None
    node_id, sep, secret = credential[len(CREDENTIAL_PREFIX):].partition("_")
    if not sep or not node_id.isdigit() or not secret:
        return None
    node = Node.objects.filter(pk=int(node_id)).select_related("hardware_type").first()
    if node is None or not node.credential_hash:
        return None
    return node if hmac.compare_digest(node.credential_hash, _digest(secret)) else None


@transaction.atomic
def node_revoke_credential(*, node_id: int) -> Node:
    """The agent is cut off at once and cannot reconnect until the node joins again."""
    node = Node.objects.select_for_update().get(pk=node_id)
    node.credential_hash = ""
    node.status_reason = "credential revoked by an operator: re-join with a new token"
    node.save(update_fields=["credential_hash", "status_reason"])
    transaction.on_commit(lambda: link.disconnect_node(node_id))
    return node


# -- what a connected agent says ----------------------------------------------------------------


@_records_refusals
@transaction.atomic
def node_connected(*, node_id: int, inventory: Inventory) -> tuple[Node, bool]:
    """An agent's hello: its inventory is refreshed, and a joining or offline node comes online
    (a cordoned or draining one keeps its state). Returns (node, came_online). An inventory that
    names another node's GPU raises InventoryRefused and changes nothing (an event records it)."""
    node = Node.objects.select_for_update().select_related("hardware_type").get(pk=node_id)
    inventory_apply(node, inventory)
    node.protocol_version = PROTOCOL_VERSION
    node.last_heartbeat = timezone.now()
    came_online = node.status in (Node.Status.JOINING, Node.Status.OFFLINE)
    if came_online:
        node.status, node.status_reason = Node.Status.ONLINE, ""
    node.save()
    slots_sync(node=node)
    gpus_sync(node=node, gpus=inventory.gpus)
    return node, came_online


# More than any one node's disks hold: a larger claim is a hostile or broken agent's.
def node_heartbeat(*, node_id: int, free_volume_gib: float | None = None) -> bool:
    """Returns False if the node was offline (its hello must be redone before it counts).
    `free_volume_gib`: what its volume directory has left, as the heartbeat's check bounded it
    (None from an agent without volumes, which then gets no new volume)."""
    return Node.objects.filter(pk=node_id).exclude(status=Node.Status.OFFLINE).update(
        last_heartbeat=timezone.now(), free_volume_gib=free_volume_gib) > 0


def nodes_mark_silent_offline(*, window_s: float) -> list[int]:
    """Nodes whose last heartbeat is older than the liveness window go `offline`; returns their
    ids so the caller can mark their replicas lost. Safe to run in several workers at once."""
    cutoff = timezone.now() - timedelta(seconds=window_s)
    with transaction.atomic():
        silent = list(
            Node.objects.select_for_update(skip_locked=True)
            .filter(status__in=(Node.Status.ONLINE, Node.Status.CORDONED, Node.Status.DRAINING), last_heartbeat__lt=cutoff)
        )
        for node in silent:
            node.status = Node.Status.OFFLINE
            node.status_reason = f"no heartbeat since {node.last_heartbeat:%Y-%m-%dT%H:%M:%SZ} (window {window_s:g}s)"
            node.drain_deadline = None
            node.save(update_fields=["status", "status_reason", "drain_deadline"])
    return [n.pk for n in silent]


# -- operator actions ---------------------------------------------------------------------------

_CORDONABLE = (Node.Status.ONLINE, Node.Status.DRAINING)


def _for_update(node_id: int) -> Node:
    node = Node.objects.select_for_update().filter(pk=node_id).first()
    if node is None:
        from cloud.exceptions import NotFound

        raise NotFound(f"No node {node_id}.")
    return node


@transaction.atomic
def node_cordon(*, node_id: int) -> Node:
    """No new placements; what runs keeps running."""
    node = _for_update(node_id)
    if node.status == Node.Status.CORDONED:
        return node
    if node.status not in _CORDONABLE:
        raise Conflict(f"Node {node.hostname} is {node.status}; only an online or draining node can be cordoned.")
    node.status, node.status_reason, node.drain_deadline = Node.Status.CORDONED, "cordoned by an operator", None
    node.save(update_fields=["status", "status_reason", "drain_deadline"])
    link.sink().node_changed(node_id=node.pk, status=node.status, reason=node.status_reason)
    link.fleet_sweep_kick()
    return node


@transaction.atomic
def node_uncordon(*, node_id: int) -> Node:
    node = _for_update(node_id)
    if node.status == Node.Status.ONLINE:
        return node
    if node.status not in (Node.Status.CORDONED, Node.Status.DRAINING):
        raise Conflict(f"Node {node.hostname} is {node.status}; only a cordoned or draining node can be uncordoned.")
    node.status, node.status_reason, node.drain_deadline = Node.Status.ONLINE, "", None
    node.save(update_fields=["status", "status_reason", "drain_deadline"])
    link.sink().node_changed(node_id=node.pk, status="uncordoned", reason="")
    link.fleet_sweep_kick()  # room appeared: pending replicas may fit now
    return node


@transaction.atomic
def node_drain(*, node_id: int, timeout_s: float | None = None) -> Node:
    """Marks the node draining (no new placements) with a deadline. The fleet sweep
    (`cloud.deployments.services.fleet`) then places a replacement for each of its replicas
    and stops the old one once the replacement runs, or at the deadline."""
    if timeout_s is None:
        from django.conf import settings

        timeout_s = settings.NODE_DRAIN_TIMEOUT_S
    node = _for_update(node_id)
    if node.status not in (Node.Status.ONLINE, Node.Status.CORDONED, Node.Status.DRAINING):
        raise Conflict(f"Node {node.hostname} is {node.status}; only an online or cordoned node can be drained.")
    node.status = Node.Status.DRAINING
    node.drain_deadline = timezone.now() + timedelta(seconds=timeout_s)
    node.status_reason = f"draining: replicas move elsewhere, the rest stop by {node.drain_deadline:%H:%M:%SZ}"
    node.save(update_fields=["status", "status_reason", "drain_deadline"])
    link.sink().node_changed(node_id=node.pk, status=node.status, reason=node.status_reason)
    link.fleet_sweep_kick()
    return node


@transaction.atomic
def node_finish_drain(*, node_id: int) -> None:
    """A drained node stays out of placement as `cordoned` until an operator uncordons it."""
    reason = "drained: uncordon to place replicas here again"
    if Node.objects.filter(pk=node_id, status=Node.Status.DRAINING).update(
            status=Node.Status.CORDONED, status_reason=reason, drain_deadline=None):
        link.sink().node_changed(node_id=node_id, status=Node.Status.CORDONED, reason=reason)
