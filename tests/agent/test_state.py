import asyncio
import json
import subprocess
import sys

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.locks import VmLocks
from nodes.agent.state import StateStore, VmInfo, is_locked, validate_name
from protocol.wire import ReplicaSpec


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-lead", "UPPER", "x" * 64, "sp ace"])
def test_unsafe_vm_names_are_refused(name):
    with pytest.raises(AgentError):
        validate_name(name)


def test_spec_is_stored_without_secrets_and_info_round_trips(tmp_path):
    store = StateStore(tmp_path)
    spec = ReplicaSpec(name="a", image="img", secret_env={"K": "v4lue"}, registry_username="u", registry_password="pw")
    paths = store.create("a")
    store.write_spec(spec)
    text = paths.spec.read_text()
    assert "v4lue" not in text and '"pw"' not in text
    assert json.loads(text)["secret_env"] == ["K"]
    info = VmInfo(name="a", state="running", pid=42, host_port=30001)
    store.write_info(info)
    assert store.read_info("a") == info
    assert "stop_requested" not in info.public()
    assert store.names() == ["a"]
    assert paths.dir.stat().st_mode & 0o777 == 0o700
    store.delete("a")
    assert store.names() == []


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


class RefusalsCounted(VmLocks):
    """Counts the flock attempts another process's lock turned away."""

    refused = 0

    def _try(self, name):
        fd = super()._try(name)
        self.refused += fd is None
        return fd


async def test_vm_lock_waits_for_another_process_and_is_freed_when_it_dies(tmp_path):
    locks = RefusalsCounted(tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(locks.path("vm"))], stdout=subprocess.PIPE)
    assert await asyncio.to_thread(holder.stdout.readline) == b"held\n"
    assert await asyncio.to_thread(is_locked, locks.path("vm"))

    async def take():
        async with locks.hold("vm"):
            return locks.held("vm")

    waiter = asyncio.create_task(take())
    for _ in range(1000):
        if locks.refused >= 2:  # it tried, was turned away, and tried again
            break
        await asyncio.sleep(0.01)
    assert locks.refused >= 2 and not waiter.done() and not locks.held("vm")
    holder.kill()  # SIGKILL: the kernel drops the flock with the process
    await asyncio.to_thread(holder.wait)
    assert await asyncio.wait_for(waiter, 5)
    assert not locks.held("vm")
