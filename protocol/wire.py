"""The wire protocol shared by the control plane and the node agent (DESIGN section 5).

Plain dataclasses only: the agent imports this module on GPU hosts that carry no Django, and
the control plane imports it to build what it sends. One WebSocket per node; every frame is one
JSON object `{"type": ..., "version": ..., ...fields}`. `decode()` validates a frame completely
(size, JSON, type, version, every field's type) before anything acts on it, and raises
ProtocolError with a reason that is safe to send back in an `error` frame.

Level-triggered, like a kubelet: on every (re)connect the agent sends `hello` (inventory and
the replicas it actually runs); the plane answers `desired` (the full set this node should run,
each with the last log seq the plane stored). Anything the node runs that is not in the set is
stopped: that is the fence for a node that was declared lost. `replica.start` / `replica.stop`
carry command ids and are idempotent, so a resend is harmless.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

from protocol.checks import Bad as _Bad
from protocol.checks import checker as _checker
from protocol.checks import dataclass_checker as _dataclass_checker
from protocol.checks import register_fast
from protocol.vocabulary import HEALTH_STATES, LOG_STREAMS, VM_STATES

PROTOCOL_VERSION = 1
# A frame larger than this is refused unread: a log batch is capped well below it.
MAX_FRAME_BYTES = 1 << 20
MAX_LOG_BATCH_LINES = 2000
MAX_LOG_LINE_CHARS = 64 * 1024
MAX_DESIRED_REPLICAS = 256
HEARTBEAT_INTERVAL_S = 5.0



class ProtocolError(ValueError):
    """A frame that cannot be accepted; the message names what is wrong (never echoes secrets)."""


MAX_VOLUMES_PER_REPLICA = 8
MAX_VOLUME_GIB = 16384
MAX_VOLUMES_PER_NODE = 4096
# More room for volumes than any node has (a GiB-petabyte): what a heartbeat may claim.
MAX_FREE_VOLUME_GIB = float(2**30)
# A volume's id names its file in the agent's volume directory and its serial inside the VM:
# plain lowercase letters, digits and hyphens, so it can be neither a path nor an option.
VOLUME_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Where a volume may not be mounted inside the container: over the root, or over what /init
# itself mounts (a volume there would hide the kernel's view the workload relies on).
_RESERVED_MOUNTS = ("/proc", "/sys", "/dev", "/run/gantry")


def mount_path_problem(path: str) -> str | None:
    """Why `path` cannot be a volume's mount point inside a container, or None. One rule for
    the plane (a 400 at create) and the agent (a spec it refuses)."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "must be an absolute path"
    if len(path) > 255 or not path.isascii() or not path.isprintable():
        return "must be printable ASCII, at most 255 characters"
    if any(c in path for c in " \\,:;'\"$`\t"):
        return "may not hold spaces, quotes, backslashes, commas, colons or semicolons"
    parts = path.split("/")[1:]
    if path == "/" or path.endswith("/") or any(part in ("", ".", "..") for part in parts):
        return "must be a normalised path below / (no empty, '.' or '..' parts, no trailing /)"
    if any(path == r or path.startswith(r + "/") for r in _RESERVED_MOUNTS):
        return f"may not be at or under {', '.join(_RESERVED_MOUNTS)}"
    return None


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a node needs to run one replica; secrets arrive decrypted and stay in memory
    or in root-only files under the agent's data dir, never in logs or `vm ls` output."""

    name: str
    image: str
    # The tenant whose deployment this is. The node's image cache stands in for a failing
    # registry only for a tenant whose pull of that image the registry once allowed. Added
    # within version 1: an older plane sends none, and then the cache never stands in.
    tenant_id: str | None = None
    registry_username: str | None = None
    # repr=False: a spec that lands in a log line or a traceback's message shows no secret.
    registry_password: str | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    entrypoint: list[str] | None = None  # None: the image's own ENTRYPOINT
    args: list[str] | None = None  # None: the image's own CMD
    traffic_port: int | None = None
    # The HTTP path the node's health check GETs on traffic_port (an answer below 500 passes);
    # None: a TCP connect is the check. Added within version 1: an older plane sends none.
    health_path: str | None = None
    # The guest ports published beside traffic_port (a deployment's `expose`); the health check
    # stays on traffic_port. Added within version 1: an older plane sends none.
    ports: list[int] = field(default_factory=list)
    vcpus: int = 1
    memory_mib: int = 256
    gpu_bdfs: list[str] = field(default_factory=list)
    volumes: list[VolumeMount] = field(default_factory=list)

    def check(self) -> None:
        if len(self.volumes) > MAX_VOLUMES_PER_REPLICA:
            raise ProtocolError(f"a replica may mount at most {MAX_VOLUMES_PER_REPLICA} volumes")
        paths = [v.mount_path for v in self.volumes]
        ids = [v.volume_id for v in self.volumes]
        if len(set(paths)) != len(paths) or len(set(ids)) != len(ids):
            raise ProtocolError("a replica's volumes have distinct ids and distinct mount paths")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaSpec:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["volumes"] = [v if isinstance(v, VolumeMount) else VolumeMount(**v) for v in values.get("volumes", [])]
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """The spec as it may be shown or logged: secret values and the password removed."""
        data = self.to_dict()
        data["secret_env"] = sorted(self.secret_env)
        data["registry_password"] = None if self.registry_password is None else "***"
        return data


# -- pieces of messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeMount:
    """A persistent volume a replica's VM gets as a virtio block device, mounted by /init at
    `mount_path` inside the container's root (`ro`: read-only). The agent keeps the volume as a
    file named by `volume_id` in its volume directory, made sparse and formatted ext4 on first
    use at `size_gib`; the host never mounts it. Added within version 1: an older plane sends
    none."""

    volume_id: str
    size_gib: int
    mount_path: str
    mode: str = "rw"

    def check(self) -> None:
        if not VOLUME_ID_RE.fullmatch(self.volume_id):
            raise ProtocolError("a volume_id is 1-63 lowercase letters, digits and hyphens")
        if not 0 < self.size_gib <= MAX_VOLUME_GIB:
            raise ProtocolError(f"a volume's size_gib must be 1-{MAX_VOLUME_GIB}")
        problem = mount_path_problem(self.mount_path)
        if problem:
            raise ProtocolError(f"a volume's mount_path {problem}")
        if self.mode not in ("rw", "ro"):
            raise ProtocolError('a volume\'s mode is "rw" or "ro"')


@dataclass(frozen=True)
class Inventory:
    """What a node is. `simulated` is what the agent itself says (`--simulate-gpus`), never an
    operator flag. `cpus` and `memory_mib` are what VMs can really get here; `host` is the
    machine's topology as its sysfs shows it (sockets, cores, NUMA nodes, hugepages), which on a
    simulated node is the simulated board's.

    The GPU part, as nodes/agent/gpu/discover.py builds it: `gpus` (one object per GPU, in
    PCI order: index, uuid, name, memory_mib, pci_bdf, numa_node, iommu_group, driver, nvlink,
    healthy, usable and reason, ...), `nvswitches`, `vfio` (the IOMMU groups holding NVIDIA
    devices), `preflight` (can this node pass GPUs through, and why not), `nvidia` (the host
    driver and NVML) and `gpu_kit` (the guest driver kit, None while none is built)."""

    hostname: str
    agent_version: str
    cpus: int
    memory_mib: int
    disk_gib: int
    accelerator: str  # "kvm" or "tcg": what the probe found, not whether /dev/kvm exists
    simulated: bool = False
    gpus: list[dict] = field(default_factory=list)
    nvswitches: list[dict] = field(default_factory=list)
    host: dict = field(default_factory=dict)
    vfio: dict = field(default_factory=dict)
    preflight: dict = field(default_factory=dict)
    nvidia: dict = field(default_factory=dict)
    gpu_kit: dict | None = None
    simulated_board: str | None = None


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's state as its node sees it. `started_at`: epoch seconds the VM was started
    on the node (unchanged when a restarted agent adopts it). `log_seq`: the last log seq the
    agent has for it. `health`: "failing" while a `starting` replica's health check fails, and
    for a `running` replica once its check has failed several times in a row (the reason says
    how; the gateway takes it out of the pool until a report says "" again), else empty."""

    replica_id: str
    state: str
    reason: str = ""
    address: str | None = None
    host_port: int | None = None
    exit_code: int | None = None
    started_at: float | None = None
    log_seq: int = 0
    health: str = ""
    # Every published port, {"<guest port>": <host port>}, traffic_port's included (host_port
    # stays for it, for an older plane). Added within version 1: an older agent sends none.
    host_ports: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        if self.state not in VM_STATES:
            raise ProtocolError(f"state must be one of {', '.join(VM_STATES)}, not {self.state[:40]!r}")
        if self.health not in HEALTH_STATES:
            raise ProtocolError("health must be empty or \"failing\"")
        # A published port goes into the route table every gateway takes: one out of range
        # would have the gateways refuse the table for every tenant.
        if self.host_port is not None and not _a_port(self.host_port):
            raise ProtocolError("host_port must be a port number (1-65535)")
        for guest, host in self.host_ports.items():
            if not (guest.isascii() and guest.isdigit() and _a_port(int(guest)) and _a_port(host)):
                raise ProtocolError("host_ports must map guest port numbers to host port numbers (1-65535)")


def _a_port(number: int) -> bool:
    return 0 < number < 65536


@dataclass(frozen=True)
class LogEntry:
    """One line of a replica's log. A line longer than MAX_LOG_LINE_CHARS arrives as several
    entries, each but the last `continued` (the line goes on in the next one)."""

    seq: int
    ts: float
    stream: str
    message: str
    continued: bool = False

    def check(self) -> None:
        if self.seq < 1:
            raise ProtocolError("log seq counts from 1")
        if self.stream not in LOG_STREAMS:
            raise ProtocolError(f"stream must be one of {', '.join(LOG_STREAMS)}")
        if len(self.message) > MAX_LOG_LINE_CHARS:
            raise ProtocolError(f"a log line may hold at most {MAX_LOG_LINE_CHARS} characters")


@dataclass(frozen=True)
class DesiredReplica:
    """A replica the node should run: its spec (VM named `spec.name` == replica_id), how long a
    stop may take before the VM is killed, and the last log seq the plane has stored."""

    replica_id: str
    spec: ReplicaSpec
    stop_grace_s: float = 10.0
    acked_seq: int = 0

    def check(self) -> None:
        if self.spec.name != self.replica_id:
            raise ProtocolError("a desired replica's VM is named after its replica_id")


# -- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    type: ClassVar[str] = ""

    def check(self) -> None:
        """Rules beyond field types; raises ProtocolError."""


@dataclass(frozen=True)
class Hello(Message):
    type: ClassVar[str] = "hello"
    inventory: Inventory
    replicas: list[ReplicaReport] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat(Message):
    """`gpu_health`: per GPU {"pci_bdf", "usable", "reason"}, the agent's current verdict (a
    fault since the last hello included); the plane schedules only usable GPUs and shows the
    reason of the others to operators."""

    type: ClassVar[str] = "heartbeat"
    load1: float = 0.0
    free_disk_gib: float = 0.0
    gpu_health: list[dict] = field(default_factory=list)
    # Per replica, the last seq in its VM's log: should the node go silent, the plane can say
    # how many lines it will never get.
    log_seqs: dict[str, int] = field(default_factory=dict)
    # The space left for new volumes in the agent's volume directory (what a new volume's
    # provisioned size is checked against), and every volume file the node holds, by id, with
    # its provisioned size in GiB. Added within version 1: an older agent sends neither, and
    # then the plane places no new volume there.
    free_volume_gib: float | None = None
    volumes: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        if len(self.log_seqs) > MAX_DESIRED_REPLICAS:
            raise ProtocolError(f"at most {MAX_DESIRED_REPLICAS} replicas per node")
        if len(self.volumes) > MAX_VOLUMES_PER_NODE:
            raise ProtocolError(f"at most {MAX_VOLUMES_PER_NODE} volumes per node")
        if any(not VOLUME_ID_RE.fullmatch(k) or not 0 < v <= MAX_VOLUME_GIB for k, v in self.volumes.items()):
            raise ProtocolError("volumes map volume ids to sizes in GiB")
        # Placement compares volumes' sizes with it: NaN (which JSON decoding lets through) would
        # compare false with everything, a negative or huge value would mislead it.
        if self.free_volume_gib is not None and not 0 <= self.free_volume_gib <= MAX_FREE_VOLUME_GIB:
            raise ProtocolError(f"free_volume_gib must be a number of GiB from 0 to {MAX_FREE_VOLUME_GIB:.0f}")


@dataclass(frozen=True)
class ReplicaStatus(Message):
    type: ClassVar[str] = "replica.status"
    report: ReplicaReport


@dataclass(frozen=True)
class Logs(Message):
    type: ClassVar[str] = "logs"
    replica_id: str
    lines: list[LogEntry]

    def check(self) -> None:
        if len(self.lines) > MAX_LOG_BATCH_LINES:
            raise ProtocolError(f"a log batch may hold at most {MAX_LOG_BATCH_LINES} lines")
        seqs = [line.seq for line in self.lines]
        if seqs != sorted(seqs):
            raise ProtocolError("a log batch's lines must be in seq order")


@dataclass(frozen=True)
class Desired(Message):
    type: ClassVar[str] = "desired"
    replicas: list[DesiredReplica]
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S

    def check(self) -> None:
        if len(self.replicas) > MAX_DESIRED_REPLICAS:
            raise ProtocolError(f"at most {MAX_DESIRED_REPLICAS} replicas per node")


@dataclass(frozen=True)
class ReplicaStart(Message):
    type: ClassVar[str] = "replica.start"
    command_id: str
    replica: DesiredReplica


@dataclass(frozen=True)
class ReplicaStop(Message):
    type: ClassVar[str] = "replica.stop"
    command_id: str
    replica_id: str
    grace_s: float = 10.0


@dataclass(frozen=True)
class NodeDrain(Message):
    type: ClassVar[str] = "node.drain"
    command_id: str


@dataclass(frozen=True)
class VolumeDelete(Message):
    """Erase a volume the node holds: its blocks are discarded and its file removed. Idempotent
    (a volume the node does not hold is already gone); the node's next heartbeat no longer lists
    it, which is how the plane learns the erase is done. Refused by the agent while a VM it runs
    has the volume attached."""

    type: ClassVar[str] = "volume.delete"
    command_id: str
    volume_id: str

    def check(self) -> None:
        if not VOLUME_ID_RE.fullmatch(self.volume_id):
            raise ProtocolError("a volume_id is 1-63 lowercase letters, digits and hyphens")


@dataclass(frozen=True)
class LogsAck(Message):
    type: ClassVar[str] = "logs.ack"
    replica_id: str
    seq: int


@dataclass(frozen=True)
class Error(Message):
    """The plane's answer to a frame it refused; the connection stays open."""

    type: ClassVar[str] = "error"
    message: str
    refused_type: str = ""


AGENT_MESSAGES: tuple[type[Message], ...] = (Hello, Heartbeat, ReplicaStatus, Logs)
PLANE_MESSAGES: tuple[type[Message], ...] = (Desired, ReplicaStart, ReplicaStop, NodeDrain, VolumeDelete, LogsAck, Error)
_BY_TYPE: dict[str, type[Message]] = {m.type: m for m in (*AGENT_MESSAGES, *PLANE_MESSAGES)}


# -- encoding and validation --------------------------------------------------------------------


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """dataclasses.asdict without its deep copies (which cost more than the JSON encoding of a
    500-line log batch): frames are encoded at once and never mutated."""
    if type(value) in _SCALARS:
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in _names(type(value))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode(message: Message) -> str:
    body = {"type": message.type, "version": PROTOCOL_VERSION, **_plain(message)}
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{message.type} frame exceeds {MAX_FRAME_BYTES} bytes")
    return text


def encode_logs_records(replica_id: str, records: list[bytes]) -> str:
    """A `logs` frame that decodes as encode(Logs(replica_id, lines)) would, made of lines that
    are JSON already (the agent's log records: a LogEntry's fields, and others decode ignores).
    They are joined, not decoded and encoded again, which at 20,000 lines/s was most of the
    agent's CPU."""
    head = f'{{"type":"logs","version":{PROTOCOL_VERSION},"replica_id":{json.dumps(replica_id)},"lines":['
    frame = b"".join((head.encode(), b",".join(records), b"]}"))
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"logs frame exceeds {MAX_FRAME_BYTES} bytes")
    return frame.decode()


def decode(frame: str | bytes, *, allowed: tuple[type[Message], ...] | None = None) -> Message:
    """One frame → one validated message. `allowed`: the messages this side may receive."""
    size = len(frame.encode() if isinstance(frame, str) else frame)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = data.pop("type", None)
    version = data.pop("version", None)
    cls = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None or (allowed is not None and cls not in allowed):
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {str(version)[:10]!r} is not supported (this side speaks {PROTOCOL_VERSION})")
    return _build(cls, data, kind)


def build(cls: type, data: Any, where: str = "") -> Any:
    """One validated piece (e.g. an Inventory from the join request) outside a frame."""
    return _build(cls, data, where or cls.__name__)


def _build(cls: type, data: Any, where: str) -> Any:
    try:
        return _checker(cls)(data)
    except _Bad as bad:
        raise ProtocolError(f"{where}{bad.path}{bad.text}") from None


def _log_entry_checker() -> Callable[[Any], Any]:
    """LogEntry, checked in one pass when it is what an agent sends: a node streams thousands a
    second, and the general checker's loop over fields was most of the plane's cost of reading
    a batch. Anything else goes to the general checker, which says exactly what is wrong (or
    takes what only it takes, such as an integer ts)."""
    general = _dataclass_checker(LogEntry)
    streams = frozenset(LOG_STREAMS)

    def build_one(data):
        if type(data) is dict:
            seq, ts, stream, message = data.get("seq"), data.get("ts"), data.get("stream"), data.get("message")
            continued = data.get("continued", False)
            if (type(seq) is int and seq >= 1 and type(ts) is float and type(stream) is str and stream in streams
                    and type(message) is str and len(message) <= MAX_LOG_LINE_CHARS
                    and (continued is False or continued is True)):
                return LogEntry(seq, ts, stream, message, continued)
        return general(data)

    return build_one


register_fast(LogEntry, _log_entry_checker)


