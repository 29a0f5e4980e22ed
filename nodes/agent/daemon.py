"""`gantry-agent run`: the node daemon, wiring client, supervisor and log shipper to one runtime.

Start-up order matters. The runtime first adopts the VMs that kept running while no agent
did (recover: same VMs, no restart), then readies the guest kit and the accelerator probe, and
only then connects: the first hello already reports the adopted VMs, and no placement on a node
that says it is online waits for a kit build. A node with real GPUs also builds (or finds) its
GPU kit then, so no GPU replica's start ever waits for one; a simulated node never does. On
SIGTERM the daemon closes its connection and leaves every VM running for the next daemon to adopt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nodes.agent.client import AgentClient
from nodes.agent.errors import AgentError
from nodes.agent.gpu.host import GpuHost
from nodes.agent.guest.gpukit import ensure_gpu_kit
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR
from nodes.agent.inventory import agent_version, collect, free_disk_gib
from nodes.agent.join import Credential
from nodes.agent.runtime import MicroVmRuntime
from nodes.agent.shipper import LogShipper
from nodes.agent.supervisor import Supervisor
from nodes.agent.volumes.deletes import PendingDeletes
from protocol.wire import (
    Desired,
    Heartbeat,
    Hello,
    LogsAck,
    Message,
    NodeDrain,
    ReplicaStart,
    ReplicaStop,
    VolumeDelete,
)

log = logging.getLogger(__name__)


class Daemon:
    """`runtime`: made by `runtime_build.build_runtime` (or, in tests, from fakes of its parts).
    `client_options` go to AgentClient (backoff, timeouts) and exist for tests."""

    def __init__(self, runtime: MicroVmRuntime, credential: Credential, data_dir: Path, *,
                 client_options: dict[str, Any] | None = None, shipper_options: dict[str, Any] | None = None,
                 gpus: GpuHost | None = None, kit_cache: Path = DEFAULT_CACHE_DIR, kit_suite: str | None = None):
        self.runtime = runtime
        self.data_dir = Path(data_dir)
        self.gpus = gpus
        self.kit_cache = Path(kit_cache)
        self.kit_suite = kit_suite  # the Debian release of the GPU kit's driver (None: the host's)
        self.accel = "tcg"
        self.accel_reason = ""
        self.client = AgentClient(credential, hello=self.hello, heartbeat=self.heartbeat,
                                  on_message=self.on_message, on_disconnect=self.on_disconnect,
                                  **(client_options or {}))
        # Each needs the other: the shipper follows a log only once the supervisor has seen
        # its VM, and a removal waits for the shipper to flush the VM's last lines.
        self.shipper = LogShipper(runtime, self.client.send, state_of=lambda name: self.supervisor.state_of(name),
                                  **(shipper_options or {}))
        self.supervisor = Supervisor(runtime, self.client.send, logs=self.shipper, log_seq=self.shipper.last_seq)
        self.ready = asyncio.Event()  # recovered, kit and probe ready: about to connect
        self.volume_deletes = PendingDeletes(self.data_dir / "volumes" / ".deleting", runtime.delete_volume)

    async def hello(self) -> Hello:
        inventory = await asyncio.to_thread(collect, self.data_dir, self.accel, gpus=self.gpus,
                                            accel_reason=self.accel_reason)
        return Hello(inventory=inventory, replicas=await self.supervisor.reports())

    async def heartbeat(self) -> Heartbeat:
        load1 = os.getloadavg()[0]
        health = await asyncio.to_thread(self.gpus.health) if self.gpus is not None else []
        free_volume_gib, volumes = None, {}
        if self.runtime.volumes is not None:
            # A delete that waited for its VM to go is done by the time the heartbeat says so.
            await self.volume_deletes.retry()
            usage = await self.runtime.volumes.usage()
            free_volume_gib, volumes = round(usage.free_gib, 2), usage.volumes
        return Heartbeat(load1=load1, free_disk_gib=round(await asyncio.to_thread(free_disk_gib, self.data_dir), 2),
                         gpu_health=health, log_seqs=self.runtime.log_heads(), free_volume_gib=free_volume_gib,
                         volumes=volumes)

    async def on_message(self, message: Message) -> None:
        if isinstance(message, Desired):
            log.info("desired: %d replicas", len(message.replicas))
            self.supervisor.apply_desired(message)
            self.shipper.resume(message)
        elif isinstance(message, ReplicaStart):
            log.info("replica.start %s (command %s)", message.replica.replica_id, message.command_id)
            self.supervisor.add(message.replica)
            self.shipper.track(message.replica.replica_id, message.replica.acked_seq)
        elif isinstance(message, ReplicaStop):
            log.info("replica.stop %s (command %s, grace %.0fs)", message.replica_id, message.command_id, message.grace_s)
            self.supervisor.discard(message.replica_id, grace_s=message.grace_s)
        elif isinstance(message, NodeDrain):
            # The plane drains by placing new incarnations elsewhere and then stopping these
            # ones with replica.stop; the node itself has nothing to do but say it heard.
            log.info("node.drain (command %s): the plane moves this node's replicas", message.command_id)
        elif isinstance(message, VolumeDelete):
            # Refused while a VM of this node has it attached: kept, and erased once none has.
            gone = await self.volume_deletes.request(message.volume_id)
            log.info("volume.delete %s (command %s): %s", message.volume_id, message.command_id,
                     "erased" if gone else "in use; erased once no VM here uses it")
        elif isinstance(message, LogsAck):
            self.shipper.ack(message.replica_id, message.seq)

    async def _gpu_kit(self, kit: Any) -> None:
        if self.gpus is None or self.gpus.simulated or not await asyncio.to_thread(self.gpus.has_gpus):
            return
        try:
            gpu_kit = await ensure_gpu_kit(self.kit_cache, kit, suite=self.kit_suite)
            log.info("GPU kit ready: NVIDIA %s for guest kernel %s", gpu_kit["driver_version"], gpu_kit["kernel_version"])
        except AgentError as e:
            # The node still comes online: its preflight says "gpu kit: not built", so the
            # plane gives it no GPU work until a restart finds or builds the kit.
            log.error("no GPU kit: %s", e.message)

    def on_disconnect(self) -> None:
        self.shipper.disconnected()

    async def run(self, stop: asyncio.Event) -> int:
        """Until `stop` is set; returns how many starts were still in flight (the caller exits
        without cancelling them, so the next daemon recovers them as it would after a crash)."""
        supervisor = asyncio.create_task(self.supervisor.run(), name="supervisor")
        client: asyncio.Task | None = None
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            adopted = await self.runtime.recover()
            log.info("adopted %d VMs: %s", len(adopted), " ".join(f"{i.name}={i.state}" for i in adopted) or "-")
            await self.runtime.reassert_networks()  # an upgrade's rules reach VMs it did not start
            kit, accel = await self.runtime.host()
            self.accel, self.accel_reason = accel.name, getattr(accel, "reason", "")
            log.info("guest kit ready; accelerator %s (%s)", accel.name, self.accel_reason)
            await self._gpu_kit(kit)
            self.ready.set()
            client = asyncio.create_task(self.client.run(), name="client")
            done, _ = await asyncio.wait({stopper, supervisor, client}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopper}:
                task.result()  # a part that ended by itself is a bug: let it surface
                raise RuntimeError(f"{task.get_name()} ended unexpectedly")
        finally:
            stopper.cancel()
            if client is not None:
                client.cancel()
                await asyncio.gather(client, return_exceptions=True)
            self.shipper.disconnected()
            in_flight = self.supervisor.starting()
            if not in_flight:
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)
                await self.runtime.close()
        log.info("stopped; VMs left running for the next agent%s",
                 f" ({in_flight} starts in flight, left as a crash would leave them)" if in_flight else "")
        return in_flight


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr; the modules never log a credential or a spec's secrets."""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_daemon(runtime: MicroVmRuntime, credential: Credential, data_dir: Path, *, gpus: GpuHost | None = None,
                     kit_cache: Path = DEFAULT_CACHE_DIR, kit_suite: str | None = None) -> int:
    """The `gantry-agent run` process: until SIGTERM or SIGINT; returns its exit code."""
    configure_logging()
    daemon = Daemon(runtime, credential, data_dir, gpus=gpus, kit_cache=kit_cache, kit_suite=kit_suite)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("gantry-agent %s: node %d, control plane %s", agent_version(), credential.node_id, credential.url)
    if await daemon.run(stop):
        # asyncio.run would now cancel the starts still in flight, and a cancelled start fails
        # its replica and kills its VM. Leaving them as SIGKILL would is what the runtime is
        # built for: the next daemon drops a half-pulled VM and starts it again, and adopts one
        # already booted.
        logging.shutdown()
        os._exit(0)
    return 0
