"""What the benchmarks that boot microVMs share: running the whole benchmark inside a network
namespace it made (TAPs, nftables rules and published ports never touch the host's network, and
its loopback is the namespace's own), and a local registry holding gantry/hello."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "scripts" / "registry" / "registry.py"
HELLO = "127.0.0.1:5000/gantry/hello:latest"
KIT_BASE = Path(os.environ.get("GANTRY_TEST_KIT_CACHE", "/var/cache/gantry-agent-test"))  # the tests' kit cache


def in_netns(marker: str) -> bool:
    """Whether this process is the copy `reexec_in_netns` started."""
    return os.environ.get(marker) is not None


def reexec_in_netns(script: str, marker: str) -> int:
    """Runs `script` again inside a fresh namespace (loopback up, nothing else) and returns its
    exit code; the namespace and whatever still runs in it are gone afterwards."""
    # The guest kit is fetched with apt-get download, which needs the network the namespace
    # lacks: build (or find) it here first, in the cache the agent tests use too.
    from nodes.agent.guest.kit import ensure_kit

    asyncio.run(ensure_kit(KIT_BASE))
    name = f"gbench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, script],
                              env={**os.environ, marker: name}).returncode
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name])


def registry_with_hello(state: Path) -> None:
    """The local registry on 127.0.0.1:5000 (of the namespace) with gantry/hello pushed to it."""
    for argv in (["up", "--addr", "127.0.0.1:5000", "--name", "benchreg"], ["push-hello", "--registry", "127.0.0.1:5000"]):
        subprocess.run([sys.executable, str(REGISTRY), *argv, "--state-dir", str(state)], check=True,
                       stdout=subprocess.DEVNULL)
