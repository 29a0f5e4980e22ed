"""The daemon's side of volumes, against a stand-in plane over a real socket: heartbeats carry
every volume the node holds and the space free for new ones, `volume.delete` erases a volume no
VM uses at once, and one a running VM uses only once that VM is gone, and a replica whose
volume has another size fails with the reason.

Guests are host processes (FakeVmm, FakeNetwork: no VM boots, no network device is made; the
socket is on 127.0.0.1); the volumes are real files made by the real backend and mkfs.ext4.
"""

from __future__ import annotations

from dataclasses import replace

from nodes.agent.volumes import FileVolumes
from protocol.wire import VolumeDelete, VolumeMount
from tests.agent.plane import FakePlane, Node, data_dir, eventually, make_runtime, replica  # noqa: F401 (fixture)


def with_volume(replica_id: str, volume_id: str, size_gib: int = 1, script: str = "sleep 60"):
    r = replica(replica_id, script)
    return replace(r, spec=replace(r.spec, volumes=[VolumeMount(volume_id, size_gib, "/data")]))


async def test_heartbeats_list_volumes_and_a_delete_waits_for_the_vm_using_it(data_dir):
    plane = await FakePlane(heartbeat_interval_s=0.2).start()
    runtime = make_runtime(data_dir, volumes=FileVolumes(data_dir / "volumes"))
    busy = with_volume("r-busy", "vol-busy", 2)
    idle = with_volume("r-idle", "vol-idle", 1, script="exit 0")
    plane.desired = {busy.replica_id: busy, idle.replica_id: idle}
    node = await Node(data_dir, plane, runtime).start()
    try:
        def beat_lists(expected):
            beats = plane.messages("heartbeat")
            return beats and beats[-1].volumes == expected and beats[-1].free_volume_gib > 0

        await eventually(lambda: "running" in plane.states("r-busy"), what="r-busy running")
        await eventually(lambda: "stopped" in plane.states("r-idle"), what="r-idle ran to its end")
        await eventually(lambda: beat_lists({"vol-busy": 2, "vol-idle": 1}), what="both volumes in a heartbeat")

        # vol-idle's VM has ended: erased at once. vol-busy's runs: kept, and nothing erased.
        await plane.send(VolumeDelete(command_id="d1", volume_id="vol-idle"))
        await plane.send(VolumeDelete(command_id="d2", volume_id="vol-busy"))
        await node.heard(plane)
        assert not (data_dir / "volumes" / "vol-idle").exists()
        assert (data_dir / "volumes" / "vol-busy").stat().st_size == 2 << 30
        await eventually(lambda: beat_lists({"vol-busy": 2}), what="only vol-busy in a heartbeat")

        # The plane stops the replica; the next heartbeat finds the volume free and erases it.
        plane.desired.pop("r-busy")
        await plane.send(plane.desired_message())
        await eventually(lambda: beat_lists({}), what="no volume in a heartbeat")
        assert not (data_dir / "volumes" / "vol-busy").exists()
        assert await node.daemon.volume_deletes.pending() == []
    finally:
        await node.stop()
        await plane.close()


async def test_a_replica_naming_a_volume_of_another_size_fails_with_the_reason(data_dir):
    plane = await FakePlane().start()
    runtime = make_runtime(data_dir, volumes=FileVolumes(data_dir / "volumes"))
    first = with_volume("r-1", "vol-a", 1, script="exit 0")
    plane.desired = {first.replica_id: first}
    node = await Node(data_dir, plane, runtime).start()
    try:
        await eventually(lambda: "stopped" in plane.states("r-1"), what="r-1 ran")
        second = with_volume("r-2", "vol-a", 3)
        plane.desired = {second.replica_id: second}
        await plane.send(plane.desired_message())
        await eventually(lambda: "failed" in plane.states("r-2"), what="r-2 failed")
        report = [m.report for m in plane.messages("replica.status", replica_id="r-2")][-1]
        assert "vol-a is 1 GiB on this node and the replica asks for 3 GiB" in report.reason
        assert (data_dir / "volumes" / "vol-a").stat().st_size == 1 << 30
    finally:
        await node.stop()
        await plane.close()


async def test_a_node_without_a_volume_backend_refuses_a_replica_with_volumes(data_dir):
    plane = await FakePlane(heartbeat_interval_s=0.2).start()
    r = with_volume("r-1", "vol-a")
    plane.desired = {r.replica_id: r}
    node = await Node(data_dir, plane, make_runtime(data_dir)).start()
    try:
        await eventually(lambda: "failed" in plane.states("r-1"), what="r-1 failed")
        assert "keeps no volumes" in plane.messages("replica.status", replica_id="r-1")[-1].report.reason
        await eventually(lambda: plane.messages("heartbeat"), what="a heartbeat")
        beat = plane.messages("heartbeat")[-1]
        assert beat.free_volume_gib is None and beat.volumes == {}
    finally:
        await node.stop()
        await plane.close()
