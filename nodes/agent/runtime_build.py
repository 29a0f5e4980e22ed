"""The one place the real runtime is put together: the OCI image store, the Linux network, QEMU,
the guest kit and the accelerator probe, handed to a MicroVmRuntime (which builds none of its
far sides itself). The CLI's commands and the daemon get their runtime here, as do the benches
that measure the agent's own.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from nodes.agent.gpu.host import GpuHost
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR, ensure_kit
from nodes.agent.runtime_health import DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL_S

if TYPE_CHECKING:
    from nodes.agent.runtime import MicroVmRuntime

DEFAULT_BRIDGE = "gantry0"
DEFAULT_SUBNET = ipaddress.IPv4Network("172.31.240.0/24")


def build_runtime(
    *,
    data_dir: Path,
    netns: str | None = None,
    bridge: str = DEFAULT_BRIDGE,
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
    insecure_registries: Iterable[str] | None = None,
    trusted_registries: Iterable[str] | None = None,
    nameservers: Iterable[ipaddress.IPv4Address] | None = None,
    blocked_networks: Iterable[ipaddress.IPv4Network] = (),
    gateway_addresses: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    kit_cache: Path = DEFAULT_CACHE_DIR,
    gpus: GpuHost | None = None,
    max_unpacked_bytes: int | None = None,
    health_interval: float = DEFAULT_HEALTH_INTERVAL_S,
    health_failures: int = DEFAULT_HEALTH_FAILURES,
) -> MicroVmRuntime:
    """The real runtime, as the `vm` commands and the daemon run it.

    data_dir: this agent's state (VMs, image cache, network leases, volumes).
    netns: the namespace (`ip netns`) for the VMs' network only: bridge, TAPs, nftables rules,
      published ports, the `ss` port check, the health check and QEMU (for its TAP). None: the
      namespace this process runs in. Must exist; a missing one fails the first network step.
    bridge, subnet: the VMs' bridge and its IPv4 subnet (gateway: the first address).
    insecure_registries: HOST:PORTs reached over plain HTTP (None: 127.0.0.1:5000, localhost:5000).
    trusted_registries: HOST[:PORT]s that may be on special addresses (None: $GANTRY_TRUSTED_REGISTRIES).
    nameservers: what the VMs resolve with (None: the host's upstream resolvers).
    blocked_networks: networks VMs may not reach, beyond the special-purpose ranges (net/rules.py).
    gateway_addresses: the only sources that may open connections to published ports (the
      gateways' addresses or prefixes); empty: published ports are open to everyone.
    kit_cache: the host-wide guest kit and accelerator-probe cache.
    gpus: the node's GPUs (gpu_host_from_args); None: a node that refuses every GPU spec.
    max_unpacked_bytes: what one image's layers may expand to (None: 64 GiB, oci/limits.py).
    health_interval, health_failures: a running VM with a traffic port is checked every
      health_interval seconds, and is "failing" after health_failures failures in a row.
    Image pulls and kit downloads always use this process's own namespace. Builds objects
    only (no I/O), so it may be called on the event loop.
    """
    # Imported here so the CLI's `--help` and usage errors work even where a piece fails to import.
    from nodes.agent.images import OciImageStore
    from nodes.agent.network import LinuxNetwork, NetworkConfig
    from nodes.agent.oci.egress import trusted_from_env
    from nodes.agent.oci.limits import UnpackLimits
    from nodes.agent.runtime import MicroVmRuntime
    from nodes.agent.vmm.accel import probe_accel
    from nodes.agent.vmm.qemu import QemuVm
    from nodes.agent.volumes import FileVolumes

    kwargs = {}
    if insecure_registries:
        kwargs["insecure_registries"] = frozenset(insecure_registries)
    if trusted_registries is None:
        trusted_registries = trusted_from_env(os.environ)
    kwargs["trusted_registries"] = frozenset(trusted_registries)
    if max_unpacked_bytes is not None:
        kwargs["unpack_limits"] = UnpackLimits(max_bytes=max_unpacked_bytes)
    data_dir = Path(data_dir)
    images = OciImageStore(data_dir / "images", **kwargs)
    config = NetworkConfig(bridge=bridge, subnet=subnet, blocked_networks=tuple(blocked_networks),
                           published_from=tuple(gateway_addresses),
                           nameservers=None if nameservers is None else tuple(str(ns) for ns in nameservers))
    network = LinuxNetwork(config, data_dir / "network", netns=netns)
    return MicroVmRuntime(data_dir, images=images, network=network, vmm=QemuVm(netns=netns), kit_provider=ensure_kit,
                          accel_provider=probe_accel, kit_cache=kit_cache, netns=netns, gpus=gpus,
                          health_interval=health_interval, health_failures=health_failures,
                          volumes=FileVolumes(data_dir / "volumes"))
