"""GPU rows follow what the node's agent reports: one row per GPU of its inventory (built here by
the agent's own code over fake sysfs trees), preflight deciding whether the node gets GPU work
at all, unusable GPUs out of service with their reason, and heartbeats moving them out and back."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from cloud.deployments.models import Replica
from cloud.deployments.services import schedule_pending
from protocol import wire as p
from nodes import services
from nodes.agent.gpu.host import GpuHost
from nodes.agent.inventory import collect
from nodes.models import Gpu, Node
from tests.agent.sysfs_trees import iommu_off, share_group_with_nic, tree
from tests.deployments.factories import deployment_for
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory

pytestmark = pytest.mark.django_db

H100 = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
        "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]


def inventory(tmp_path, board="8xH100", fault=None) -> p.Inventory:
    sysfs = tree(tmp_path, board)
    if fault is not None:
        fault(sysfs)
    return collect(tmp_path, "tcg", gpus=GpuHost(sysfs, tmp_path / "data", simulated=board, hostname="hgx-1"))


@pytest.fixture
def hgx():
    return HardwareTypeFactory(slug="h100-80gb-sxm-8x", gpus_per_node=8, allowed_gpu_counts=[1, 8],
                               interconnect="nvswitch")


def joined(hardware, inv: p.Inventory, hostname="hgx-1") -> Node:
    made = services.node_create(hostname=hostname, hardware_type=hardware, location=LocationFactory(),
                                public_address="198.51.100.34")
    services.node_join(token=made.join_token, inventory=inv)
    node, _ = services.node_connected(node_id=made.node.pk, inventory=inv)
    return node


def test_join_makes_a_row_per_gpu_of_the_board(hgx, tmp_path):
    inv = inventory(tmp_path)
    made = services.node_create(hostname="hgx-1", hardware_type=hgx, location=LocationFactory())
    node, _ = services.node_join(token=made.join_token, inventory=inv)
    rows = list(Gpu.objects.filter(node=node).order_by("index"))
    assert [g.pci_bdf for g in rows] == H100 and [g.index for g in rows] == list(range(8))
    assert [g.uuid for g in rows] == [g["uuid"] for g in inv.gpus]
    assert [g.numa_node for g in rows] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {g.nvlink_domain for g in rows} == {"nvswitch:0000:05:00.0"}
    assert rows[0].iommu_group == 2 and rows[0].model == "NVIDIA H100 80GB HBM3" and rows[0].memory_mib == 81559
    assert {g.health for g in rows} == {"ok"}
    node.refresh_from_db()
    assert node.simulated and node.gpu_passthrough and node.gpu_passthrough_reason == ""
    assert len(node.inventory["nvswitches"]) == 4 and node.inventory["preflight"]["passthrough"] is True
    assert node.inventory["simulated_board"] == "8xH100"


def test_a_node_that_cannot_pass_gpus_through_gets_no_gpu_replica_and_says_why(hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path, fault=iommu_off))
    assert not node.gpu_passthrough and node.gpu_passthrough_reason.startswith("iommu: no IOMMU groups")
    assert "intel_iommu=on" in node.gpu_passthrough_reason
    deployment = deployment_for(TenantFactory(), hardware_id=hgx.pk, gpus_per_container=8)
    assert schedule_pending() == 0
    (replica,) = Replica.objects.filter(deployment=deployment)
    assert replica.node_id is None
    assert replica.reason.endswith("none with enough free (1 of them cannot pass GPUs through to VMs)")


def test_an_unusable_gpu_is_out_of_service_with_its_reason_and_never_placed(hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path, fault=lambda s: share_group_with_nic(s, H100[4])))
    bad = Gpu.objects.get(node=node, pci_bdf=H100[4])
    assert bad.health == "out" and "0000:19:00.0" in bad.health_reason and "ACS" in bad.health_reason
    assert node.gpu_passthrough  # the other seven still go
    deployment = deployment_for(TenantFactory(max_gpus=64), hardware_id=hgx.pk, gpus_per_container=1, replica_count=8)
    assert schedule_pending() == 7
    assert Replica.objects.filter(deployment=deployment, node__isnull=True).count() == 1
    assert Gpu.objects.get(pk=bad.pk).replica_id is None


def test_an_8_gpu_replica_needs_all_eight_in_service(hgx, tmp_path):
    joined(hgx, inventory(tmp_path, fault=lambda s: share_group_with_nic(s, H100[0])))
    deployment_for(TenantFactory(), hardware_id=hgx.pk, gpus_per_container=8)
    assert schedule_pending() == 0


def test_a_gpu_gone_from_the_inventory_goes_when_free_and_is_taken_out_while_held(hgx, tmp_path):
    inv = inventory(tmp_path)
    node = joined(hgx, inv)
    deployment = deployment_for(TenantFactory(), hardware_id=hgx.pk, gpus_per_container=1)
    assert schedule_pending() == 1
    held = Gpu.objects.get(node=node, replica__isnull=False)
    shrunk = p.Inventory(**{**inv.__dict__, "gpus": [g for g in inv.gpus if g["pci_bdf"] not in (held.pci_bdf, H100[7])]})
    services.node_connected(node_id=node.pk, inventory=shrunk)
    assert not Gpu.objects.filter(node=node, pci_bdf=H100[7]).exists()
    held.refresh_from_db()
    assert held.health == "out" and held.health_reason == "no longer in its node's inventory"
    assert held.replica.deployment_id == deployment.pk
    services.node_connected(node_id=node.pk, inventory=inv)  # back, and re-indexed as reported
    assert Gpu.objects.filter(node=node).count() == 8 and Gpu.objects.get(pk=held.pk).health == "ok"


def test_heartbeats_move_a_gpu_out_of_service_and_back(hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path))
    out = [{"pci_bdf": H100[2], "usable": False, "reason": "failed its reset after a VM: reset (flr/bus) failed"},
           {"pci_bdf": H100[3], "usable": True, "reason": ""}]
    assert services.gpus_health(node_id=node.pk, health=out) == 1
    gpu = Gpu.objects.get(node=node, pci_bdf=H100[2])
    assert (gpu.health, gpu.health_reason) == ("out", "failed its reset after a VM: reset (flr/bus) failed")
    assert services.gpus_health(node_id=node.pk, health=out) == 0  # the same word again changes nothing
    assert services.gpus_health(node_id=node.pk, health=[{"pci_bdf": H100[2], "usable": True, "reason": ""}]) == 1
    assert Gpu.objects.get(pk=gpu.pk).health == "ok"


def test_entries_that_are_not_gpus_are_ignored(hgx, tmp_path):
    inv = inventory(tmp_path)
    junk = p.Inventory(**{**inv.__dict__, "gpus": [*inv.gpus[:2], "x", {"pci_bdf": "nope", "uuid": "u", "index": 9},
                                                  {"pci_bdf": "0000:99:00.0", "uuid": 7, "index": 3}]})
    node = joined(hgx, junk)
    assert list(Gpu.objects.filter(node=node).values_list("pci_bdf", flat=True)) == H100[:2]


def test_a_cpu_node_never_gets_gpu_rows(tmp_path):
    cpu = HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=4, allowed_gpu_counts=[0])
    node = joined(cpu, inventory(tmp_path))
    assert not Gpu.objects.filter(node=node).exists() and node.gpu_passthrough is False


@pytest.mark.django_db(transaction=True)
async def test_a_heartbeat_over_the_socket_takes_a_gpu_out(tmp_path):
    from tests.nodes.test_agent_consumer import connect, receive, send

    def setup():
        hardware = HardwareTypeFactory(slug="h100-80gb-sxm-8x", gpus_per_node=8, allowed_gpu_counts=[1, 8])
        inv = inventory(tmp_path)
        made = services.node_create(hostname="hgx-1", hardware_type=hardware, location=LocationFactory())
        return services.node_join(token=made.join_token, inventory=inv)[1], inv

    credential, inv = await sync_to_async(setup)()
    communicator, connected = await connect(credential)
    assert connected
    await send(communicator, p.Hello(inventory=inv))
    assert isinstance(await receive(communicator), p.Desired)
    await send(communicator, p.Heartbeat(gpu_health=[{"pci_bdf": H100[1], "usable": False, "reason": "XID 79"}]))
    await send(communicator, p.Heartbeat())  # answered in order: once this one is in, so is the first

    def health():
        return Gpu.objects.get(pci_bdf=H100[1]).health

    for _ in range(50):
        if await sync_to_async(health)() == "out":
            break
        await asyncio.sleep(0.1)
    assert await sync_to_async(health)() == "out"
    assert await sync_to_async(lambda: Node.objects.get().last_heartbeat <= timezone.now())()
    await communicator.disconnect()
