"""`/ws/v1/agent/`: one WebSocket per node (DESIGN section 5).

The node's credential comes as `Authorization: Bearer gnode_...`; anything else is refused
before the socket opens (the handshake gets a 403). Every frame is validated by
`protocol.wire.decode`; a frame that is malformed, oversized, unknown, out of order or about a
replica placed on another node gets an `error` frame and a log line, and the consumer keeps
serving. A hello whose inventory names another node's GPU is refused the same way (and recorded
as a node event by the service): the node stays un-greeted until it says an honest hello. Replica reports go to the deployments app through `nodes.link.sink()`.

The consumer remembers what it last told its agent (`_sent`), so a `node.sync` from any
process turns into exactly the `replica.start` / `replica.stop` commands that changed.

Log batches are stored by a task of their own (`_store_logs`), in the order they came: while
one batch is in PostgreSQL the next is already being read and validated, and other frames
(heartbeats, reports) are never stuck behind a chatty replica's log. The agent's window bounds
how many wait.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from cloud.streams import NoConnectionSweep
from nodes import link, services
from protocol import wire as p

log = logging.getLogger(__name__)

# Close codes the agent can tell apart (4000-4999 are the application's).
CLOSE_OFFLINE = 4000  # declared offline while connected: reconnect and say hello again
CLOSE_REPLACED = 4001  # another connection for this node took over, or the credential changed
CLOSE_RETRY = 4002  # the plane failed to store what was sent: reconnect and resend from the stored seq
# Decoded log batches waiting for the database; a full queue holds up reading the socket. An agent
# keeps 4 batches in flight per replica, so this is a few busy replicas' worth.
LOG_QUEUE_BATCHES = 16
MAX_STORED_LINES = p.MAX_LOG_BATCH_LINES  # lines of one replica stored in one transaction: a bounded wait for its first line
# A volume erase the node still lists is asked again after this long (the agent refuses one while
# a VM it runs still has the volume: a stop the plane saw before the node finished it).
ERASE_RESEND_S = 30.0


def _bearer(scope) -> str:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if kind.lower() == "bearer" else ""
    return ""


class AgentConsumer(NoConnectionSweep, AsyncWebsocketConsumer):
    node_id: int | None = None

    async def connect(self):
        node = await database_sync_to_async(services.node_authenticate)(_bearer(self.scope))
        if node is None:
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.node_id = node.pk
        self.hostname = node.hostname
        self._sent: dict[str, p.DesiredReplica] = {}
        self._erase_sent: dict[str, float] = {}  # volume id -> when volume.delete was last sent
        self._greeted = False
        self._logs: asyncio.Queue[p.Logs] = asyncio.Queue(LOG_QUEUE_BATCHES)
        self._log_store = asyncio.create_task(self._store_logs(), name=f"node-{node.pk}-logs")
        # One live connection per node: an older one (a half-dead socket) is told to go.
        await self.channel_layer.group_send(link.node_group(node.pk), {"type": "node.disconnect"})
        await self.channel_layer.group_add(link.node_group(node.pk), self.channel_name)
        await self.accept()
        log.info("agent of node %s (%s) connected", node.pk, node.hostname)

    async def disconnect(self, code):
        if self.node_id is not None:
            # Batches not stored yet were not acknowledged either: the agent sends them again.
            self._log_store.cancel()
            await self.channel_layer.group_discard(link.node_group(self.node_id), self.channel_name)
            log.info("agent of node %s disconnected (%s)", self.node_id, code)

    # -- frames from the agent ----------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        frame = text_data if text_data is not None else bytes_data
        kind = "?"
        try:
            message = p.decode(frame or "", allowed=p.AGENT_MESSAGES)
            kind = message.type
            if not self._greeted and not isinstance(message, p.Hello):
                raise p.ProtocolError(f"send hello before {message.type}")
            await self._handle(message)
        except (p.ProtocolError, link.NotPlacedHere, services.InventoryRefused) as exc:
            await self._refuse(kind, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad frame must never end the node's session
            log.exception("node %s: %s frame failed", self.node_id, kind)
            await self._refuse(kind, f"internal error handling {kind}: {type(exc).__name__}")

    async def _refuse(self, kind: str, reason: str) -> None:
        log.warning("node %s: refused %s frame: %s", self.node_id, kind, reason)
        await self.send(text_data=p.encode(p.Error(message=reason[:500], refused_type=kind[:40])))

    async def _handle(self, message: p.Message) -> None:
        sink = link.sink()
        if isinstance(message, p.Hello):
            node, came_online = await database_sync_to_async(services.node_connected)(
                node_id=self.node_id, inventory=message.inventory)
            await database_sync_to_async(sink.hello)(node_id=self.node_id, reports=message.replicas)
            self._greeted = True
            desired = await database_sync_to_async(sink.desired)(node_id=self.node_id)
            self._sent = {d.replica_id: d for d in desired}
            await self.send(text_data=p.encode(p.Desired(replicas=desired)))
            self._erase_sent = {}  # a new connection: every erase still to do is asked again
            await self._send_erases()
            if came_online:
                await database_sync_to_async(sink.node_online)(node_id=self.node_id)
        elif isinstance(message, p.Heartbeat):
            if not await database_sync_to_async(services.node_heartbeat)(
                    node_id=self.node_id, free_volume_gib=message.free_volume_gib):
                # Declared offline meanwhile (its replicas are lost and placed elsewhere): the
                # agent must reconnect, say hello, and be fenced by the new desired set.
                await self.close(code=CLOSE_OFFLINE)
            else:
                if message.gpu_health:
                    await database_sync_to_async(services.gpus_health)(node_id=self.node_id, health=message.gpu_health)
                if message.log_seqs:
                    await database_sync_to_async(sink.log_heads)(node_id=self.node_id, heads=message.log_seqs)
                # An agent that keeps volumes says so by saying how much room it has; an older
                # one's empty list must not read as "every volume erased".
                volume_sink = link.volume_sink()
                if message.free_volume_gib is not None and volume_sink is not None:
                    await database_sync_to_async(volume_sink.report)(node_id=self.node_id, volumes=message.volumes)
                    await self._send_erases(listed=set(message.volumes))
        elif isinstance(message, p.ReplicaStatus):
            await database_sync_to_async(sink.report)(node_id=self.node_id, report=message.report)
        elif isinstance(message, p.Logs):
            await self._logs.put(message)

    async def _store_logs(self) -> None:
        store = database_sync_to_async(link.sink().logs)
        carry: p.Logs | None = None
        while True:
            first = carry or await self._logs.get()
            carry = None
            # The batches of this replica queued right behind it go with it: when the database
            # falls behind, one transaction (one lock, one commit, one acknowledgement) stores
            # what would have been several.
            lines = first.lines
            while len(lines) < MAX_STORED_LINES and not self._logs.empty():
                queued = self._logs.get_nowait()
                if queued.replica_id != first.replica_id or len(lines) + len(queued.lines) > MAX_STORED_LINES:
                    carry = queued
                    break
                lines = [*lines, *queued.lines]
            message = first if lines is first.lines else p.Logs(replica_id=first.replica_id, lines=lines)
            try:
                seq = await store(node_id=self.node_id, replica_id=message.replica_id, lines=message.lines)
            except link.NotPlacedHere as exc:
                await self._refuse("logs", str(exc))
                continue
            except Exception:  # noqa: BLE001 - see below
                # Storing the next batch would leave a hole that a resend could never fill (a
                # resend at or below the stored seq is dropped). Closing makes the agent
                # reconnect and ship again from what is stored: late, never lost.
                log.exception("node %s: storing a log batch of %s failed; reconnecting it", self.node_id,
                              message.replica_id[:40])
                await self.close(code=CLOSE_RETRY)
                return
            await self.send(text_data=p.encode(p.LogsAck(replica_id=message.replica_id, seq=seq)))

    # -- messages from the rest of the plane (channel layer) --------------------------------------
    async def node_sync(self, event):
        if not self._greeted:
            return  # the hello's answer will carry the whole set
        desired = await database_sync_to_async(link.sink().desired)(node_id=self.node_id)
        now = {d.replica_id: d for d in desired}
        for replica_id, entry in now.items():
            if replica_id not in self._sent:
                await self.send(text_data=p.encode(p.ReplicaStart(command_id=uuid.uuid4().hex, replica=entry)))
        for replica_id, entry in self._sent.items():
            if replica_id not in now:
                await self.send(text_data=p.encode(p.ReplicaStop(
                    command_id=uuid.uuid4().hex, replica_id=replica_id, grace_s=entry.stop_grace_s)))
        self._sent = now
        await self._send_erases()

    async def _send_erases(self, *, listed: set[str] | None = None) -> None:
        """`volume.delete` for each volume this node must erase: once per connection, and again
        while a heartbeat (`listed`) still names it after ERASE_RESEND_S."""
        volume_sink = link.volume_sink()
        if volume_sink is None:
            return
        now = asyncio.get_running_loop().time()
        for volume_id in await database_sync_to_async(volume_sink.erasable)(node_id=self.node_id):
            sent = self._erase_sent.get(volume_id)
            if sent is None or (listed is not None and volume_id in listed and now - sent >= ERASE_RESEND_S):
                self._erase_sent[volume_id] = now
                await self.send(text_data=p.encode(p.VolumeDelete(command_id=uuid.uuid4().hex, volume_id=volume_id)))

    async def node_disconnect(self, event):
        if self._greeted or self.node_id is not None:
            await self.close(code=CLOSE_REPLACED)
