"""How the rest of the plane reaches a connected agent, and how the agent consumer reaches the
replicas without importing the deployments app (imports run one way: deployments → nodes).

- `notify_node(node_id)`: after a commit that changed what a node should run, its consumer
  (wherever it runs: any daphne process) recomputes the desired set and sends the difference.
- `disconnect_node(node_id)`: closes the node's socket (credential revoked or replaced).
- `ReplicaSink`: what the consumer (and the capacity reads in nodes/selectors.py) need of the
  replica side; the deployments app registers its implementation in `AppConfig.ready()`.
- `VolumeSink`: what the consumer needs of the volumes app (a heartbeat's volume list, the
  erases to send); the volumes app registers it the same way.
"""

from __future__ import annotations

import logging
from typing import Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import QuerySet

from protocol.wire import DesiredReplica, LogEntry, ReplicaReport

log = logging.getLogger(__name__)


def node_group(node_id: int) -> str:
    return f"node.{node_id}"


def _send(node_id: int, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(node_group(node_id), message)
    except Exception:  # noqa: BLE001 - Redis away: the agent converges on its next hello/sweep
        log.warning("could not reach node %s's consumer through the channel layer", node_id, exc_info=True)


def notify_node(node_id: int) -> None:
    """Tell the node's consumer to resync once the current transaction commits."""
    transaction.on_commit(lambda: _send(node_id, {"type": "node.sync"}))


def fleet_sweep_kick() -> None:
    """Ask a worker for a fleet pass (replicas follow their nodes' states) after the commit;
    the task is named, not imported: it belongs to the deployments app."""

    def send() -> None:
        from cloud.celery import app

        try:
            app.send_task("deployments.fleet_sweep", ignore_result=True)
        except Exception:  # noqa: BLE001 - the periodic sweep runs anyway
            log.warning("could not queue a fleet sweep", exc_info=True)

    transaction.on_commit(send)


def disconnect_node(node_id: int) -> None:
    transaction.on_commit(lambda: _send(node_id, {"type": "node.disconnect"}))


class NotPlacedHere(Exception):
    """A node reported on a replica that is not placed on it."""


class ReplicaSink(Protocol):
    def hello(self, *, node_id: int, reports: list[ReplicaReport]) -> None: ...

    def report(self, *, node_id: int, report: ReplicaReport) -> None: ...

    def logs(self, *, node_id: int, replica_id: str, lines: list[LogEntry]) -> int: ...

    def desired(self, *, node_id: int) -> list[DesiredReplica]: ...

    def node_online(self, *, node_id: int) -> None: ...

    def node_changed(self, *, node_id: int, status: str, reason: str) -> None:
        """An operator cordoned, drained or uncordoned the node (or its drain finished): the
        deployments with replicas on it are told, in the caller's transaction."""

    def log_heads(self, *, node_id: int, heads: dict[str, int]) -> None:
        """The node's heartbeat: the last seq in each of its replicas' logs."""

    def unfinished_replicas(self) -> QuerySet:
        """Every replica not yet over (`TERMINAL_STATES`), as a queryset with a `node_id`
        column: each holds a unit on its node. Lazy, so a selector can filter it into a
        subquery of its own query."""


class VolumeSink(Protocol):
    def report(self, *, node_id: int, volumes: dict[str, int]) -> None:
        """A heartbeat from an agent that keeps volumes: every volume file it holds."""

    def erasable(self, *, node_id: int) -> list[str]:
        """Ids of the volumes this node must erase now (`volume.delete`, idempotent)."""


_volume_sink: VolumeSink | None = None


def register_volume_sink(sink: VolumeSink) -> None:
    global _volume_sink
    _volume_sink = sink


def volume_sink() -> VolumeSink | None:
    return _volume_sink


_sink: ReplicaSink | None = None


def register_sink(sink: ReplicaSink) -> None:
    global _sink
    _sink = sink


def sink() -> ReplicaSink:
    if _sink is None:  # pragma: no cover - a wiring bug, not a runtime condition
        raise RuntimeError("no ReplicaSink registered (is cloud.deployments installed?)")
    return _sink
