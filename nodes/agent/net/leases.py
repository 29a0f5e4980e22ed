"""VM address and host-port leases, persisted so an agent restart hands out the same values.

One small JSON file (`<state_dir>/network.json`), replaced atomically (write a temporary
file, fsync, rename) so a crash leaves either the old or the new version. Changes happen
under `LeaseFile.locked()`: an asyncio lock for this process plus an flock on a sibling
lock file, because the operator CLI and the agent may both run on one host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from nodes.agent.errors import AgentError

VERSION = 1


@dataclass
class VmLease:
    address: ipaddress.IPv4Address
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> host port


@dataclass
class Leases:
    vms: dict[str, VmLease] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "version": VERSION,
            "vms": {
                name: {"address": str(lease.address), "ports": {str(g): h for g, h in sorted(lease.ports.items())}}
                for name, lease in sorted(self.vms.items())
            },
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Leases:
        data = json.loads(text)
        return cls(
            {
                name: VmLease(
                    ipaddress.IPv4Address(vm["address"]), {int(g): int(h) for g, h in vm.get("ports", {}).items()}
                )
                for name, vm in data.get("vms", {}).items()
            }
        )

    def lease_address(self, name: str, subnet: ipaddress.IPv4Network, reserved: set[ipaddress.IPv4Address]) -> VmLease:
        """The VM's lease, allocating an address when it has none (or one outside `subnet`)."""
        lease = self.vms.get(name)
        if lease is not None and lease.address in subnet and lease.address not in reserved:
            return lease
        used = reserved | {vm.address for other, vm in self.vms.items() if other != name}
        hosts = list(subnet.hosts())
        # Start probing at a point derived from the name rather than at the lowest free
        # address: a freed address is then rarely handed straight to the next VM, whose
        # different MAC would meet stale ARP entries in neighbours' caches.
        start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(hosts)
        for offset in range(len(hosts)):
            candidate = hosts[(start + offset) % len(hosts)]
            if candidate not in used:
                if lease is None:
                    lease = self.vms[name] = VmLease(candidate)
                else:
                    lease.address = candidate
                return lease
        raise AgentError(f"no free VM address left in {subnet}: {len(self.vms)} VMs hold leases")

    def lease_port(
        self, name: str, guest_port: int, host_port: int | None, port_range: tuple[int, int],
        listening: frozenset[int] = frozenset(),
    ) -> int:
        """`listening`: TCP ports a program on the node listens on; a new lease avoids them
        (DNAT would take that program's traffic), an explicit request for one is refused."""
        lease = self.vms[name]
        holders = {
            host: (other, guest) for other, vm in self.vms.items() for guest, host in vm.ports.items()
        }
        if host_port is not None:
            holder = holders.get(host_port)
            if holder is not None and holder != (name, guest_port):
                raise AgentError(
                    f"host port {host_port} is already published for {holder[0]} port {holder[1]}", permanent=True
                )
            if holder is None and host_port in listening:
                raise AgentError(f"host port {host_port} is in use by another program on this node", permanent=True)
            lease.ports[guest_port] = host_port
            return host_port
        current = lease.ports.get(guest_port)
        if current is not None:
            return current
        low, high = port_range
        for candidate in range(low, high + 1):
            if candidate not in holders and candidate not in listening:
                lease.ports[guest_port] = candidate
                return candidate
        raise AgentError(f"no free host port left in {low}-{high}")


class LeaseFile:
    def __init__(self, path: Path):
        self.path = path
        self._lock = asyncio.Lock()

    async def read(self) -> Leases:
        return await asyncio.to_thread(self._read)

    async def write(self, leases: Leases) -> None:
        await asyncio.to_thread(self._write, leases.to_json())

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        async with self._lock:
            fd = await asyncio.to_thread(self._open_lock)
            try:
                # Polled rather than a blocking flock in a worker thread: a cancelled caller
                # would otherwise leave a thread that takes the lock later and never drops it.
                while not _try_flock(fd):
                    await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # closing drops the flock

    def _open_lock(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _read(self) -> Leases:
        try:
            return Leases.from_json(self.path.read_text())
        except FileNotFoundError:
            return Leases()
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError(f"network lease file {self.path} is corrupt: {exc}") from exc

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut too
        finally:
            os.close(dir_fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
