"""The runtime's on-disk state: one directory per VM under `<data_dir>/vms/<name>/`.

Everything here is synchronous file work; the runtime calls it through `asyncio.to_thread`.
Files are replaced atomically (write a temp file, rename), so a SIGKILL at any point leaves
either the old or the new version, never a torn JSON document.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from nodes.agent.errors import AgentError
from protocol.wire import ReplicaSpec
from protocol.vocabulary import VM_NAME_RULE, is_vm_name


def validate_name(name: str) -> str:
    if not is_vm_name(name):
        raise AgentError(f"invalid VM name {name!r}: use {VM_NAME_RULE}", permanent=True)
    return name


@dataclass
class VmInfo:
    """What `vm ls` shows and `state.json` persists (no secrets: the spec is not part of it)."""

    name: str
    state: str
    reason: str = ""
    image: str = ""
    digest: str = ""
    pid: int | None = None
    address: str | None = None
    host_port: int | None = None  # the traffic port's
    # Every published port: {"<guest port>": host port}, the traffic port's included.
    host_ports: dict[str, int] = field(default_factory=dict)
    accel: str = ""
    exit_code: int | None = None
    restarts: int = 0
    started_at: float | None = None
    # Set by stop/rm before QEMU is asked to power off, so that its death reads as `stopped`
    # and not as a crash, even if the agent is killed half-way through the stop.
    stop_requested: bool = False
    # A running VM's health check as the agent last judged it (runtime_health.py): "failing"
    # and why, or "" while it passes. Only the checker sets them; any other state clears them.
    health: str = ""
    health_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("stop_requested")
        return data


@dataclass(frozen=True)
class VmPaths:
    """The files of one VM; the vmm writes qemu.pid, qmp.sock, qemu.log and *.raw (and guest.sh,
    the spec with its secrets, which exists only until QEMU has it open)."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    spec = property(lambda self: self.dir / "spec.json")
    state = property(lambda self: self.dir / "state.json")
    lock = property(lambda self: self.dir / "vm.lock")
    logs = property(lambda self: self.dir / "logs.jsonl")
    logs_lock = property(lambda self: self.dir / "logs.lock")
    logs_trim = property(lambda self: self.dir / "logs.trim")
    overlay = property(lambda self: self.dir / "overlay.qcow2")
    pidfile = property(lambda self: self.dir / "qemu.pid")
    qemu_log = property(lambda self: self.dir / "qemu.log")
    stdout = property(lambda self: self.dir / "stdout.raw")
    stderr = property(lambda self: self.dir / "stderr.raw")
    status = property(lambda self: self.dir / "status.raw")


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, (json.dumps(data, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class StateStore:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.vms_dir = self.data_dir / "vms"

    def paths(self, name: str) -> VmPaths:
        return VmPaths(self.vms_dir / validate_name(name))

    def names(self) -> list[str]:
        try:
            entries = sorted(self.vms_dir.iterdir())
        except FileNotFoundError:
            return []
        return [p.name for p in entries if p.is_dir() and is_vm_name(p.name)]

    def create(self, name: str) -> VmPaths:
        paths = self.paths(name)
        # 0700: the QMP socket lives here, and guest.sh (secret env) for the instant of a launch.
        paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return paths

    def write_spec(self, spec: ReplicaSpec) -> None:
        # Redacted on purpose: secret values reach the VM only through the vmm's guest.sh, which
        # the launch unlinks before QEMU runs (vmm/qemu.py: SPEC_FD).
        write_json_atomic(self.paths(spec.name).spec, spec.redacted())

    def read_spec(self, name: str) -> dict[str, Any] | None:
        return read_json(self.paths(name).spec)

    def write_info(self, info: VmInfo) -> None:
        write_json_atomic(self.paths(info.name).state, info.to_dict())

    def read_info(self, name: str) -> VmInfo | None:
        data = read_json(self.paths(name).state)
        return VmInfo.from_dict(data) if isinstance(data, dict) else None

    def delete(self, name: str) -> None:
        shutil.rmtree(self.paths(name).dir, ignore_errors=True)


@contextlib.contextmanager
def try_flock(path: Path) -> Iterator[bool]:
    """Non-blocking exclusive flock; yields whether it was taken. Released on exit or on the
    holder's death (the kernel drops flocks with the fd), which is what crash safety needs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether another process holds the flock on `path` (e.g. a `vm run` still creating)."""
    if not path.exists():
        return False
    with try_flock(path) as taken:
        return not taken
