"""The GPU parts of the wire protocol: an inventory with GPUs, NVSwitches, IOMMU groups,
preflight and the GPU kit round-trips, a hello from an agent older than them still decodes, and
heartbeats carry each GPU's verdict."""

from __future__ import annotations

import json

import pytest

from nodes.agent.gpu.host import GpuHost
from nodes.agent.inventory import collect
from protocol.wire import Heartbeat, Hello, Inventory, ProtocolError, decode, encode
from tests.agent.sysfs_trees import tree


def test_a_gpu_inventory_round_trips(tmp_path):
    inventory = collect(tmp_path, "kvm", gpus=GpuHost(tree(tmp_path), tmp_path / "data", simulated="8xH100"))
    again = decode(encode(Hello(inventory=inventory)))
    assert again.inventory == inventory
    assert len(again.inventory.gpus) == 8 and again.inventory.preflight["passthrough"] is True
    assert len(encode(Hello(inventory=inventory))) < 64 * 1024  # far below the frame limit


def test_a_hello_from_before_gpus_still_decodes():
    frame = json.dumps({"type": "hello", "version": 1, "inventory": {
        "hostname": "h", "agent_version": "0.0.9", "cpus": 2, "memory_mib": 1, "disk_gib": 1, "accelerator": "tcg"}})
    inventory = decode(frame).inventory
    assert inventory.gpus == [] and inventory.nvswitches == [] and inventory.preflight == {} and inventory.gpu_kit is None


def test_a_heartbeat_carries_each_gpus_verdict():
    beat = Heartbeat(gpu_health=[{"pci_bdf": "0000:18:00.0", "usable": False, "reason": "XID 79"}])
    assert decode(encode(beat)) == beat
    with pytest.raises(ProtocolError, match="gpu_kit must be an object"):
        decode(json.dumps({"type": "hello", "version": 1, "inventory": {
            "hostname": "h", "agent_version": "1", "cpus": 2, "memory_mib": 1, "disk_gib": 1, "accelerator": "kvm",
            "gpu_kit": "x"}}))
    assert Inventory(hostname="h", agent_version="1", cpus=1, memory_mib=1, disk_gib=1, accelerator="kvm").simulated is False
