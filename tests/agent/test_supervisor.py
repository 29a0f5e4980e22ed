"""The supervisor (nodes/agent/supervisor.py) converging a node to the plane's desired set,
driven over the real WebSocket by a stand-in plane: starts what is missing, fences what is
not its own, changes nothing on a resend, and reports every state with a reason."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from nodes.agent.events import RuntimeEvent
from nodes.agent.supervisor import Supervisor, pull_reason
from protocol.wire import Desired, ReplicaSpec, ReplicaStart, ReplicaStop
from tests.agent.fakes import FakeImageStore, FakeVmm
from tests.agent.plane import SH, Node, eventually, make_runtime, plane, data_dir, replica  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def launches(node) -> list[str]:
    return [call[1] for call in node.runtime.vmm.calls if call[0] == "launch"]


async def test_desired_starts_what_is_missing_and_fences_what_is_not_in_the_set(plane, data_dir):
    earlier = make_runtime(data_dir)
    await earlier.start(ReplicaSpec(name="old", image="sh", args=["sleep 60"]))
    await earlier.close()
    plane.desired["new"] = replica("new")  # "old" was placed elsewhere while this node was away

    node = await Node(data_dir, plane).start()
    await eventually(lambda: "running" in plane.states("new"), what="new running")
    await eventually(lambda: not (data_dir / "vms" / "old").exists(), what="old removed")
    assert plane.states("old")[-2:] == ["stopping", "stopped"]
    assert plane.states("new")[0] == "pulling" and launches(node) == ["new"]
    running = plane.messages("replica.status", replica_id="new")[-1].report
    assert running.address == "127.0.0.1" and running.started_at is not None
    assert [i.name for i in await node.runtime.list()] == ["new"]
    await node.stop()


async def test_resent_desired_and_start_commands_change_nothing(plane, data_dir):
    plane.desired["a"] = replica("a")
    node = await Node(data_dir, plane).start()
    await eventually(lambda: "running" in plane.states("a"), what="a running")
    b = replica("b")
    for _ in range(2):
        await plane.send(plane.desired_message())
        await plane.send(ReplicaStart(command_id="c-1", replica=b))
    await eventually(lambda: "running" in plane.states("b"), what="b running")
    await plane.send(ReplicaStart(command_id="c-1", replica=b))
    await plane.send(Desired(replicas=[replica("a"), b]))
    await node.settled(plane)
    assert sorted(launches(node)) == ["a", "b"]
    assert plane.states("a").count("running") == 1 and plane.states("b").count("running") == 1
    await node.stop()


class GraceVmm(FakeVmm):
    """Records the grace each stop was given (FakeVmm's guest dies on the first SIGTERM)."""

    def __init__(self):
        super().__init__()
        self.graces = []

    async def stop(self, vm_dir, *, timeout=10):
        self.graces.append((vm_dir.name, timeout))
        await super().stop(vm_dir, timeout=timeout)


async def test_replica_stop_stops_with_its_grace_then_removes_and_a_resend_is_harmless(plane, data_dir):
    plane.desired["r"] = replica("r", grace=60)
    plane.desired["s"] = replica("s", grace=600)
    vmm = GraceVmm()
    node = await Node(data_dir, plane, runtime=make_runtime(data_dir, vmm=vmm)).start()
    await eventually(lambda: "running" in plane.states("r") and "running" in plane.states("s"), what="running")
    for _ in range(2):
        await plane.send(ReplicaStop(command_id="c-9", replica_id="r", grace_s=0.5))
    await eventually(lambda: not (data_dir / "vms" / "r").exists(), what="r removed")
    await plane.send(Desired(replicas=[]))  # s is fenced with its spec's grace, capped at 5 minutes
    await eventually(lambda: not (data_dir / "vms" / "s").exists(), what="s removed")
    assert ("r", 0.5) in vmm.graces and ("s", 300.0) in vmm.graces
    assert plane.states("r").count("stopped") == 1 and plane.states("s")[-1] == "stopped"
    await plane.send(ReplicaStop(command_id="c-9", replica_id="r", grace_s=0.5))
    await node.settled(plane)
    assert plane.states("r").count("stopped") == 1
    await node.stop()


async def test_an_ended_replica_is_reported_and_not_restarted(plane, data_dir):
    plane.desired["done"] = replica("done", "echo bye")
    plane.desired["bad"] = replica("bad", "exit 3")
    plane.desired["gone"] = replica("gone", image="no-such-image")
    node = await Node(data_dir, plane).start()
    await eventually(lambda: "stopped" in plane.states("done") and "failed" in plane.states("bad")
                     and "failed" in plane.states("gone"), what="all three ended")
    failed = plane.messages("replica.status", replica_id="bad")[-1].report
    assert failed.exit_code == 3 and "exited with code 3" in failed.reason
    assert "no-such-image not found" in plane.messages("replica.status", replica_id="gone")[-1].report.reason
    await plane.send(plane.desired_message())
    await node.settled(plane)
    assert launches(node).count("done") == 1 and launches(node).count("bad") == 1
    assert (await node.runtime.get("done")).state == "stopped"  # kept: the plane decides
    assert plane.states("gone").count("failed") == 1
    await node.stop()


async def test_a_replica_without_a_vm_is_reported_failed_once_and_never_restarted(plane, data_dir):
    plane.desired["Not_A_VM_Name"] = replica("Not_A_VM_Name")  # the runtime refuses the name outright
    plane.desired["r"] = replica("r")
    node = await Node(data_dir, plane).start()
    await eventually(lambda: "failed" in plane.states("Not_A_VM_Name") and "running" in plane.states("r"),
                     what="reported")
    assert "invalid VM name" in plane.messages("replica.status", replica_id="Not_A_VM_Name")[0].report.reason
    await node.runtime.remove("r")  # an operator's `vm rm` behind the daemon's back
    for _ in range(3):
        await plane.send(plane.desired_message())
    await eventually(lambda: "failed" in plane.states("r"), what="r reported gone")
    await node.settled(plane)
    assert plane.states("Not_A_VM_Name") == ["failed"] and plane.states("r").count("failed") == 1
    assert plane.messages("replica.status", replica_id="r")[-1].report.reason == "its VM was removed from the node"
    assert launches(node) == ["r"]
    await node.stop()


class SlowImages(FakeImageStore):
    """Image "slow" pulls for as long as the test wants (`release` it), like a big image."""

    def __init__(self, root):
        super().__init__(root, {"sh": SH, "slow": SH})
        self.release = asyncio.Event()

    async def ensure_disk(self, ref, *, credentials=None, tenant=None, progress=None):
        if ref == "slow":
            progress(SimpleNamespace(phase="pull", done_bytes=312_000_000, total_bytes=870_000_000))
            await self.release.wait()
        return await super().ensure_disk(ref, credentials=credentials, progress=progress)


async def test_a_slow_pull_blocks_no_one_and_a_stop_during_it_reports_stopped(plane, data_dir):
    images = SlowImages(data_dir.parent / "images")
    plane.desired["big"] = replica("big", image="slow")
    node = await Node(data_dir, plane, runtime=make_runtime(data_dir, images=images)).start()
    await eventually(lambda: any(m.report.reason == "pulling 312/870 MB"
                                 for m in plane.messages("replica.status", replica_id="big")), what="pull progress")
    await plane.send(ReplicaStart(command_id="c-2", replica=replica("small")))
    await eventually(lambda: "running" in plane.states("small"), what="small running beside the slow pull")
    assert set(plane.states("big")) == {"pulling"}

    await plane.send(ReplicaStop(command_id="c-4", replica_id="big", grace_s=1))
    await eventually(lambda: "stopped" in plane.states("big"), what="big stopped")
    assert "failed" not in plane.states("big")  # its start was cancelled, which is no failure
    assert plane.messages("replica.status", replica_id="big")[-1].report.reason == "stopped before it ran"
    await eventually(lambda: not (data_dir / "vms" / "big").exists(), what="big removed")
    assert (await node.runtime.get("small")).state == "running"
    images.release.set()
    await node.stop()


async def test_nothing_is_fenced_before_the_first_desired(data_dir):
    runtime = make_runtime(data_dir)
    await runtime.start(ReplicaSpec(name="keep", image="sh", args=["sleep 60"]))
    sent = []

    async def send(message):
        sent.append(message)
        return True

    supervisor = Supervisor(runtime, send)
    task = asyncio.create_task(supervisor.run())
    supervisor._wake.set()  # a converge pass with no desired yet (the plane unreachable)
    await eventually(supervisor.idle, what="the pass done")
    assert (await runtime.get("keep")).state == "running"
    supervisor.apply_desired(Desired(replicas=[]))
    await eventually(lambda: not (data_dir / "vms" / "keep").exists(), what="keep fenced")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await runtime.close()


def test_pull_progress_reads_as_megabytes_per_phase():
    def event(phase, done, total):
        return RuntimeEvent("r", "pulling", 0.0, phase=phase, done_bytes=done, total_bytes=total)

    assert pull_reason(event("pull", 312_400_000, 870_000_000)) == "pulling 312/870 MB"
    assert pull_reason(event("unpack", 0, 1024)) == "unpacking 0/1 MB"
    assert pull_reason(event("disk", 5_000_000, 10_000_000)) == "building disk 5/10 MB"
    assert pull_reason(event("resolve", 0, 0)) == "resolving image"
    assert pull_reason(event("cached", 1, 1)) == "image cached"
    assert pull_reason(RuntimeEvent("r", "pulling", 0.0)) == "pulling image"
