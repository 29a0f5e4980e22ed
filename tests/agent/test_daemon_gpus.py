"""The daemon on a (simulated) GPU node, against a stand-in plane over a real socket: its hello
carries the GPU inventory and preflight, its heartbeats each GPU's verdict, and a replica given
the whole board runs, bound on the board, saying it is simulated.

No VM boots and no network device is made (FakeVmm, FakeNetwork); the socket is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from nodes.agent.gpu.host import GpuHost
from nodes.agent.runtime import MicroVmRuntime
from tests.agent.fakes import FakeImageStore, FakeNetwork, FakeVmm, fake_accel, fake_kit
from tests.agent.plane import SH, FakePlane, Node, eventually, replica
from tests.agent.sysfs_trees import tree
from tests.agent.test_vfio import H100, SWITCHES


async def gpu_node(data_dir, plane, sysfs):
    gpus = GpuHost(sysfs, data_dir, simulated="8xH100")
    runtime = MicroVmRuntime(data_dir, images=FakeImageStore(data_dir.parent / "images", {"sh": SH}),
                             network=FakeNetwork(), vmm=FakeVmm(), kit_provider=fake_kit, accel_provider=fake_accel,
                             poll_interval=0.02, gpus=gpus)
    return await Node(data_dir, plane, runtime, gpus=gpus).start()


async def test_hello_carries_the_board_and_heartbeats_each_gpus_verdict(tmp_path):
    plane = await FakePlane(heartbeat_interval_s=0.2).start()
    sysfs = await asyncio.to_thread(tree, tmp_path)
    node = await gpu_node(tmp_path / "data", plane, sysfs)
    try:
        await eventually(lambda: plane.messages("hello"), what="hello")
        inventory = plane.messages("hello")[0].inventory
        assert inventory.simulated and inventory.simulated_board == "8xH100"
        assert [g["pci_bdf"] for g in inventory.gpus] == H100 and len(inventory.nvswitches) == 4
        assert inventory.preflight["passthrough"] is True
        await eventually(lambda: any(m.gpu_health for m in plane.messages("heartbeat")), what="a heartbeat")
        beat = [m for m in plane.messages("heartbeat") if m.gpu_health][-1]
        assert [h["pci_bdf"] for h in beat.gpu_health] == H100 and all(h["usable"] for h in beat.gpu_health)
        await asyncio.to_thread((sysfs.root / "dev" / "kmsg").write_text,
                                "4,1,1,-;NVRM: Xid (PCI:0000:ab:00): 79, pid=0, GPU has fallen off the bus.\n")

        def out_of_service():
            beats = [m for m in plane.messages("heartbeat") if m.gpu_health]
            return beats and not {h["pci_bdf"]: h for h in beats[-1].gpu_health}[H100[5]]["usable"]

        await eventually(out_of_service, what="GPU 5 out of service in a heartbeat")
    finally:
        await node.stop()
        await plane.close()


async def test_a_whole_board_replica_runs_bound_and_says_it_is_simulated(tmp_path):
    plane = await FakePlane().start()
    sysfs = await asyncio.to_thread(tree, tmp_path)
    big = replica("big")
    plane.desired[big.replica_id] = replace(big, spec=replace(big.spec, gpu_bdfs=H100, vcpus=128,
                                                                    memory_mib=1600 * 1024))
    node = await gpu_node(tmp_path / "data", plane, sysfs)
    try:
        await eventually(lambda: "running" in plane.states("big"), what="running")
        (report,) = [m.report for m in plane.messages("replica.status", replica_id="big") if m.report.state == "running"]
        assert report.reason.startswith("simulated 8xH100: 8 GPU(s) bound on the simulated board")

        def drivers():
            return {sysfs.link_name(sysfs.pci(b, "driver")) for b in H100 + SWITCHES}

        assert await asyncio.to_thread(drivers) == {"vfio-pci"}
    finally:
        await node.stop()
        await plane.close()
