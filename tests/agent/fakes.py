"""Fakes of the far side of the runtime's boundaries, for fast unit tests of MicroVmRuntime.

Each records its calls and can be told to fail the next call (`fail_next`). The real pieces
are exercised by the `vm`-marked end-to-end tests; these only copy their observable behaviour.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodes.agent.errors import AgentError


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail_next: dict[str, AgentError] = {}

    def _record(self, method: str, *args) -> None:
        self.calls.append((method, *args))
        if method in self.fail_next:
            raise self.fail_next.pop(method)


@dataclass(frozen=True)
class FakeImageConfig:
    env: dict = field(default_factory=dict)
    entrypoint: list = field(default_factory=list)
    cmd: list = field(default_factory=list)
    workdir: str = "/"
    user: str = ""
    exposed_ports: list = field(default_factory=list)


@dataclass(frozen=True)
class FakeImageDisk:
    ref: str
    digest: str
    path: Path
    size_bytes: int
    config: FakeImageConfig


class FakeImageStore(_Recorder):
    """Copies OciImageStore: ensure_disk reports progress phases (pull with bytes of total,
    then disk) and returns the cached disk with the image config; create_overlay makes a
    file at dest; a missing ref raises a permanent ImageError-like AgentError."""

    def __init__(self, root: Path, images: dict[str, FakeImageConfig]):
        super().__init__()
        self.root = root
        self.images = images

    async def ensure_disk(self, ref, *, credentials=None, tenant=None, progress=None):
        self._record("ensure_disk", ref, credentials)
        if ref not in self.images:
            raise AgentError(f"image {ref} not found in registry", permanent=True)
        if progress:
            from types import SimpleNamespace

            for done in (0, 512, 1024):
                progress(SimpleNamespace(phase="pull", done_bytes=done, total_bytes=1024))
            progress(SimpleNamespace(phase="disk", done_bytes=1024, total_bytes=1024))
        path = self.root / "base.ext4"
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.touch)
        return FakeImageDisk(ref, "sha256:" + "ab" * 32, path, 1024, self.images[ref])

    async def create_overlay(self, disk, dest: Path) -> None:
        self._record("create_overlay", dest)
        await asyncio.to_thread(dest.write_bytes, b"QFI\xfb")

    async def evict(self, *, in_use):
        self._record("evict", in_use)
        return []


@dataclass(frozen=True)
class FakeVmNetwork:
    tap: str
    mac: str
    address: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    prefixlen: int


class FakeNetwork(_Recorder):
    """Copies LinuxNetwork's lease bookkeeping: ensure_tap is idempotent per name, publish_port
    leases a host port, remove is idempotent, owned() names everything with a TAP or lease.
    Guests of FakeVmm are host processes, so the 'VM address' is 127.0.0.1 and a published
    port is the guest port itself."""

    def __init__(self) -> None:
        super().__init__()
        self.taps: set[str] = set()
        self.ports: dict[str, dict[int, int]] = {}  # name -> {guest port: host port}

    async def ensure_host(self) -> None:
        self._record("ensure_host")

    async def ensure_tap(self, name: str):
        self._record("ensure_tap", name)
        self.taps.add(name)
        return FakeVmNetwork("gt" + name[:10], "02:00:00:00:00:01", ipaddress.IPv4Address("127.0.0.1"),
                             ipaddress.IPv4Address("127.0.0.1"), 8)

    async def publish_port(self, name: str, guest_port: int, host_port: int | None = None) -> int:
        self._record("publish_port", name, guest_port)
        self.ports.setdefault(name, {})[guest_port] = guest_port
        return guest_port

    async def remove(self, name: str) -> None:
        self._record("remove", name)
        self.taps.discard(name)
        self.ports.pop(name, None)

    async def owned(self) -> set[str]:
        return set(self.taps) | set(self.ports)


# The guest side of FakeVmm: what nodes/agent/guest/init does inside the VM, run on the host.
_GUEST = r"""
import json, os, subprocess, sys, time
d = sys.argv[1]
g = json.load(open(os.path.join(d, "guest.json")))
out = open(os.path.join(d, "stdout.raw"), "ab", buffering=0)
err = open(os.path.join(d, "stderr.raw"), "ab", buffering=0)
st = open(os.path.join(d, "status.raw"), "ab", buffering=0)
def event(**e):
    st.write((json.dumps({**e, "ts": time.time()}) + "\n").encode())
attempt = 0
while True:
    attempt += 1
    proc = subprocess.Popen(g["argv"], env=g["env"], stdout=out, stderr=err, cwd=g["workdir"])
    event(event="start", attempt=attempt)
    code = proc.wait()
    event(event="exit", code=code, attempt=attempt)
    if code == 0 or attempt > g["max_restarts"]:
        break
    time.sleep(g["backoff_s"])
event(event="final", code=code)
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class FakeVmm(_Recorder):
    """Copies QemuVm: launch writes qemu.pid (and guest.json, 0600, for its fake guest) and
    runs the guest detached in its own session, appending stdout.raw/stderr.raw/status.raw
    exactly as QEMU and /init do (start/exit per attempt, restarts with backoff up to
    max_restarts, then final); alive() checks the pid is a live guest of that vm_dir; stop()
    terminates, then kills."""

    def __init__(self, netns: str | None = None) -> None:
        super().__init__()
        self.procs: dict[Path, asyncio.subprocess.Process] = {}
        # A namespace the test made: the guests (and so whatever they serve) live in it, as a
        # real node's VMs live in its --netns. `ip netns exec` execs, so the pid is the guest's.
        self.netns = netns
        self.prefix = ["ip", "netns", "exec", netns] if netns else []

    async def launch(self, launch) -> int:
        self._record("launch", launch.name)
        await asyncio.to_thread(_write_private, launch.vm_dir / "guest.json", json.dumps(asdict(launch.guest)))
        proc = await asyncio.create_subprocess_exec(
            *self.prefix, sys.executable, "-c", _GUEST, str(launch.vm_dir), start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.procs[launch.vm_dir] = proc
        await asyncio.to_thread((launch.vm_dir / "qemu.pid").write_text, f"{proc.pid}\n")
        return proc.pid

    def alive(self, vm_dir: Path) -> bool:
        try:
            pid = int((vm_dir / "qemu.pid").read_text())
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z" and str(vm_dir).encode() in cmdline

    async def stop(self, vm_dir: Path, *, timeout: float = 10) -> None:
        self._record("stop", vm_dir)
        if not await asyncio.to_thread(self.alive, vm_dir):
            return
        pid = int(await asyncio.to_thread((vm_dir / "qemu.pid").read_text))
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(self.alive, vm_dir):
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class FakeAccel:
    name: str = "tcg"
    reason: str = "fake: no accelerator probed"


async def fake_kit(data_dir: Path):
    return {"kernel": "fake"}


async def fake_accel(data_dir: Path, kit) -> FakeAccel:
    return FakeAccel()
