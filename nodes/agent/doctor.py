"""`gantry-agent doctor`: can this host run microVMs, and if not, what to fix.

Each check measures the real thing (the accelerator by booting a probe VM, the guest kit by
building or finding it) and reports {"name", "ok", "detail", "fix"}.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from nodes.agent.errors import AgentError
from nodes.agent.gpu.host import GpuHost
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR
from nodes.agent.net.host import NetnsHost


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def _tools() -> list[dict[str, Any]]:
    wanted = {
        "qemu-system-x86_64": "qemu-system-x86",
        "qemu-img": "qemu-utils",
        "setsid": "util-linux",  # QEMU is started detached through `setsid -f`
        "nsenter": "util-linux",  # ... and, with --netns, inside the VMs' namespace
        "mkfs.ext4": "e2fsprogs",
        "nft": "nftables",
        "ip": "iproute2",
    }
    out = []
    for tool, package in wanted.items():
        path = shutil.which(tool)
        out.append(_check(f"tool {tool}", path is not None, path or "not found on PATH",
                          f"apt-get install {package} (or run scripts/ensure-debs.sh)"))
    return out


async def _ip_forward(vm_net: NetnsHost) -> dict[str, Any]:
    try:
        forward = await vm_net.read_sysctl("net/ipv4/ip_forward")
    except (OSError, AgentError) as exc:
        forward = f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    # The agent turns forwarding on itself when it sets up the bridge; off is only a problem if
    # something (a sysctl.d file, a firewall manager) keeps turning it back off.
    return _check("ip_forward", forward in ("0", "1"),
                  f"net.ipv4.ip_forward={forward}" + (" (the agent enables it at start)" if forward == "0" else ""),
                  "make /proc/sys/net/ipv4/ip_forward writable (the agent sets it to 1)")


def _host() -> list[dict[str, Any]]:
    out = []
    tun = Path("/dev/net/tun")
    out.append(_check("/dev/net/tun", tun.exists(), "present" if tun.exists() else "missing",
                      "modprobe tun (in a container: pass --device /dev/net/tun)"))
    bridge_ok = Path("/sys/module/bridge").exists() or any(
        Path("/lib/modules", os.uname().release).glob("kernel/net/bridge/bridge.ko*")
    )
    out.append(_check("bridge support", bridge_ok, "bridge module loaded or available" if bridge_ok else "no bridge module",
                      "install the kernel's bridge module (linux-modules) or build it in"))
    out.append(_check("root", os.geteuid() == 0, f"euid {os.geteuid()}",
                      "run the agent as root: it creates TAPs, nftables rules and runs QEMU"))
    return out


async def run_doctor(
    *, bridge: str = "gantry0", kit_cache: Path = DEFAULT_CACHE_DIR, netns: str | None = None,
    gpus: GpuHost | None = None,
) -> dict[str, Any]:
    """`netns`: the namespace the VMs' network lives in (the bridge and ip_forward are checked
    there); the kit and the accelerator are the host's, checked from this process. `gpus`: the
    node's GPUs; their preflight is one check here ("gpu passthrough"), in full under
    `preflight`. No GPU at all is not a failure: the node runs CPU work."""
    checks: list[dict[str, Any]] = []
    checks += await asyncio.to_thread(_tools)
    checks += await asyncio.to_thread(_host)
    vm_net = NetnsHost(netns)
    checks.append(await _ip_forward(vm_net))
    exists = (await vm_net.run("ip", "-j", "link", "show", bridge, check=False)).returncode == 0
    where = f" in netns {netns}" if netns else ""
    # Informational: the bridge is created on the first `vm run`.
    checks.append(_check(f"bridge {bridge}", True,
                         ("exists" if exists else "not created yet (made on first vm run)") + where))
    kit = None
    try:
        from nodes.agent.guest.kit import ensure_kit

        kit = await ensure_kit(Path(kit_cache))
        checks.append(_check("guest kit", True, f"kernel {kit.kernel_version}: {kit.kernel}, initrd {kit.initrd}"))
        # Informational: a bzImage boots too, only slower and with a kernel copy per VM.
        slow = "" if kit.boot == "pvh" else (
            " (VMs boot slower and each keeps its own copy of the kernel;"
            " apt-get install lz4 zstd, and the next start rebuilds the kit)"
        )
        checks.append(_check("kernel boot", True, f"{kit.boot}{slow}"))
    except Exception as exc:  # a doctor reports, it does not crash
        checks.append(_check("guest kit", False, f"{type(exc).__name__}: {exc}",
                             "needs apt-get download of linux-image-cloud-amd64 and busybox-static (apt sources reachable)"))
    accel: dict[str, Any] = {}
    if kit is not None:
        try:
            from nodes.agent.vmm.accel import probe_accel

            result = await probe_accel(Path(kit_cache), kit)
            accel = {"name": result.name, "reason": result.reason}
            checks.append(_check("accelerator", True, f"{result.name}: {result.reason}"))
        except Exception as exc:
            checks.append(_check("accelerator", False, f"{type(exc).__name__}: {exc}",
                                 "check that qemu-system-x86_64 runs (try the probe's command line by hand)"))
    preflight: dict[str, Any] = {}
    if gpus is not None:
        gpu = await asyncio.to_thread(gpus.inventory, accel=accel.get("name", "tcg"), accel_reason=accel.get("reason", ""))
        preflight = gpu["preflight"]
        if gpu["gpus"]:
            failed = [f"{c['name']}: {c['fix']}" for c in preflight["checks"] if not c["ok"] and c["fix"]]
            checks.append(_check("gpu passthrough", preflight["passthrough"],
                                 f"{len(gpu['gpus'])} GPU(s), {len(gpu['nvswitches'])} NVSwitch(es)"
                                 + (f"{' (simulated ' + gpus.simulated + ')' if gpus.simulated else ''}")
                                 + ("" if preflight["passthrough"] else f": {preflight['reason']}"),
                                 "; ".join(failed) or preflight["reason"]))
        else:
            checks.append(_check("gpu passthrough", True, "no NVIDIA GPU on this node: it runs CPU work"))
    return {"ok": all(c["ok"] for c in checks), "accel": accel, "checks": checks, "preflight": preflight}
