"""Volumes in real microVMs (QEMU under TCG, the real registry and hello image), driven through
the operator CLI as an operator would: each command is a fresh agent process that adopts what
runs, so an agent SIGKILLed mid-boot is just one more of them.

One node (data dir, namespace for the VMs' network) for the whole module: the tests run in
order and the counter volume carries from one to the next.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.agent.conftest import AgentCli
from tests.agent.conftest_vmm import KIT_CACHE
from tests.agent.netns import create_netns

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(900)]

# Increments a counter on the volume, prints it, and (with an argument) stays up.
COUNTER = ('n=$(cat /data/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/count; sync; '
           'echo "count $n"; [ -z "$1" ] || exec sleep "$1"')


@pytest.fixture(scope="module")
def node(tmp_path_factory, agent_shared_dir, vmm_kit, local_registry):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = create_netns("gtvol")
    data = tmp_path_factory.mktemp("volnode") / "data"
    data.mkdir()
    (agent_shared_dir / "images").mkdir(exist_ok=True)
    (data / "images").symlink_to(agent_shared_dir / "images")
    yield AgentCli(data, ns.name, KIT_CACHE)
    ns.close()  # kills whatever still runs in it (QEMU does)


def run(node: AgentCli, name: str, local_registry: str, script: str, *volumes: str, args: tuple[str, ...] = (),
        check: bool = True):
    return node("vm", "run", name, "--image", f"{local_registry}/gantry/hello:latest",
                "--entrypoint", json.dumps(["/bin/sh", "-c", script, "sh", *args]),
                *(a for v in volumes for a in ("--volume", v)), check=check)


def messages(node: AgentCli, name: str, stream: str = "stdout") -> list[str]:
    _, lines, _ = node("vm", "logs", name)
    return [x["message"] for x in lines if x["stream"] == stream]


def wait_state(node: AgentCli, name: str, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, vms, _ = node("vm", "ls")
        info = next(v for v in vms if v["name"] == name)
        if info["state"] in states:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.5)


def once(node: AgentCli, name: str, local_registry: str, script: str, *volumes: str) -> list[str]:
    _, info, _ = run(node, name, local_registry, script, *volumes)
    info = wait_state(node, name, {"stopped", "failed"})
    assert (info["state"], info["exit_code"]) == ("stopped", 0), info
    out = messages(node, name)
    node("vm", "rm", name)
    return out


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text() + Path("/proc/1/mountinfo").read_text()


def test_a_counter_on_a_volume_survives_stop_start_and_an_agent_sigkill(node, local_registry):
    volume = "vcount:1:/data"
    assert once(node, "c1", local_registry, COUNTER, volume) == ["count 1"]
    assert once(node, "c2", local_registry, COUNTER, volume) == ["count 2"]

    # The agent is SIGKILLed as soon as QEMU exists; the VM boots on without it and the next
    # agent (each CLI command is one) adopts it, volume attached, nothing reformatted.
    vm_dir = node.data_dir / "vms" / "c3"
    proc = node.spawn("vm", "run", "c3", "--image", f"{local_registry}/gantry/hello:latest", "--volume", volume,
                      "--entrypoint", json.dumps(["/bin/sh", "-c", COUNTER, "sh", "4"]))
    deadline = time.monotonic() + 120
    while not (vm_dir / "qemu.pid").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    info = wait_state(node, "c3", {"stopped", "failed"})
    assert (info["state"], info["exit_code"]) == ("stopped", 0), info
    assert messages(node, "c3") == ["count 3"]
    node("vm", "rm", "c3")
    assert once(node, "c4", local_registry, COUNTER, volume) == ["count 4"]

    # Only ever a file to the host: never mounted, here or in any namespace the node shares.
    assert str(node.data_dir / "volumes") not in host_mounts()
    _, usage, _ = node("volume", "ls")
    assert usage["volumes"] == {"vcount": 1} and usage["free_volume_gib"] > 0


def test_a_read_only_volume_refuses_writes_and_a_missing_mount_path_is_made(node, local_registry):
    script = 'cat /mnt/deep/ro/count; echo x > /mnt/deep/ro/new || echo "write refused"; ls -d /mnt/deep/ro'
    _, info, _ = run(node, "ro1", local_registry, script, "vcount:1:/mnt/deep/ro:ro")
    info = wait_state(node, "ro1", {"stopped", "failed"})
    assert info["state"] == "stopped", info
    assert messages(node, "ro1") == ["4", "write refused", "/mnt/deep/ro"]
    assert any("Read-only file system" in line for line in messages(node, "ro1", "stderr"))
    node("vm", "rm", "ro1")


def test_a_volume_in_use_is_not_erased_until_its_vm_is_gone(node, local_registry, tmp_path):
    _, info, _ = run(node, "busy", local_registry, COUNTER.replace("/data", "/work"), "vbusy:1:/work", args=("600",))
    assert info["state"] == "running", info
    path = node.data_dir / "volumes" / "vbusy"
    rc, out, _ = node("volume", "rm", "vbusy", check=False)
    assert rc == 1 and "in use by busy" in out["error"]
    assert path.exists() and path.stat().st_blocks > 0
    # A witness link to the inode, outside the volume dir: it shows the erase discards blocks.
    witness = node.data_dir / "witness"
    os.link(path, witness)
    node("vm", "stop", "busy")  # its QEMU is gone: the volume is free
    assert node("volume", "rm", "vbusy")[1] == {"erased": "vbusy"}
    assert not path.exists() and witness.stat().st_blocks == 0
    assert node("volume", "rm", "vbusy")[1] == {"erased": "vbusy"}  # again: already gone
    witness.unlink()
    node("vm", "rm", "busy")


def test_a_replica_naming_a_volume_of_another_size_fails_before_its_boot(node, local_registry):
    rc, info, _ = run(node, "big", local_registry, COUNTER, "vcount:2:/data", check=False)
    assert rc == 1
    assert "vcount is 1 GiB on this node and the replica asks for 2 GiB" in info.get("reason", info.get("error", ""))
    assert not (node.data_dir / "vms" / "big" / "qemu.pid").exists()


def test_several_volumes_each_mount_at_their_own_path_nested_ones_inside_their_parent(node, local_registry):
    # The child comes first in the spec: /init still mounts /a before /a/b, or /a would hide it.
    script = "echo a > /a/f; echo b > /a/b/f; cat /data/count /a/f /a/b/f"
    assert once(node, "m1", local_registry, script, "vchild:1:/a/b", "vparent:1:/a", "vcount:1:/data:ro") == [
        "4", "a", "b"]
    # The parent alone: its own file, and an empty mount point where the child was.
    assert once(node, "m2", local_registry, "ls -A /a; cat /a/f; ls -A /a/b", "vparent:1:/a") == [
        "b", "f", "lost+found", "a"]
