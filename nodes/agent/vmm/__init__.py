"""QEMU microVMs: acceleration probe, command line, launch/stop, QMP and the guest spec.

`Vmm` is what the runtime needs of a VM monitor: exactly the calls MicroVmRuntime makes.
QemuVm (qemu.py) is the real one; tests/agent/fakes.py's FakeVmm runs the guest as a host
process. A Vmm keeps no state of its own: everything about a VM is in its vm_dir, which is
how a new runtime adopts the VMs an earlier one launched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from nodes.agent.vmm.cmdline import VmLaunch


@runtime_checkable
class Vmm(Protocol):
    """launch: starts the VM detached and returns its pid once it runs. alive: whether the
    vm_dir's VM still runs (blocking: small /proc reads). stop: graceful power-off, then a kill
    after `timeout`; returns once the VM is gone, and at once for a VM that is not running."""

    async def launch(self, launch: VmLaunch) -> int: ...

    def alive(self, vm_dir: Path) -> bool: ...

    async def stop(self, vm_dir: Path, *, timeout: float = 10) -> None: ...
