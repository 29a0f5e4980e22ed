"""Node reports stay on their node (issue 23): a node's inventory that names a GPU another node
holds never touches that node's rows. The hello is refused with an error frame, nothing of its
inventory is applied, and operators get a node event saying which GPU and which node.

Each attack goes through the real agent consumer (the full ASGI application, Redis channel layer,
PostgreSQL) or the real join endpoint, with inventories built by the agent's own code over
simulated sysfs trees."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import pytest
from asgiref.sync import sync_to_async

from cloud.deployments.models import Replica
from cloud.deployments.services import schedule_pending
from protocol import wire as p
from nodes import services
from nodes.models import Gpu, JoinToken, Node, NodeEvent
from tests.deployments.factories import deployment_for
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory
from tests.nodes.test_agent_consumer import connect, receive, send
from tests.nodes.test_gpus import inventory

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(node_id: int) -> list[tuple]:
    return list(Gpu.objects.filter(node_id=node_id).order_by("pk").values_list(
        "pk", "node_id", "index", "uuid", "pci_bdf", "replica_id", "health", "health_reason"))


def _two_nodes(tmp_path):
    """Node 1 online with its 8 GPUs, one of them held by a placed replica; node 2 joined with
    a board of its own, its last two GPUs not yet in its inventory (so a hello may bring new
    ones). Returns node 1, node 2, node 2's credential and node 2's full inventory."""
    hardware = HardwareTypeFactory(slug="h100-80gb-sxm-8x", gpus_per_node=8, allowed_gpu_counts=[1, 8])
    location = LocationFactory()
    first_inventory = inventory(tmp_path / "one")
    made = services.node_create(hostname="hgx-1", hardware_type=hardware, location=location)
    services.node_join(token=made.join_token, inventory=first_inventory)
    first, _ = services.node_connected(node_id=made.node.pk, inventory=first_inventory)
    deployment_for(TenantFactory(), hardware_id=hardware.pk, gpus_per_container=1)
    assert schedule_pending() == 1
    second_inventory = inventory(tmp_path / "two")
    made = services.node_create(hostname="hgx-2", hardware_type=hardware, location=location)
    at_join = p.Inventory(**{**second_inventory.__dict__, "gpus": second_inventory.gpus[:-2]})
    second, credential = services.node_join(token=made.join_token, inventory=at_join)
    return first, second, credential, second_inventory


def _naming(inv: p.Inventory, uuids: list[str]) -> p.Inventory:
    """`inv` with its last GPUs' UUIDs replaced by `uuids` (its own PCI addresses kept)."""
    gpus = [dict(g) for g in inv.gpus]
    for gpu, uuid in zip(gpus[len(gpus) - len(uuids):], uuids):
        gpu["uuid"] = uuid
    return p.Inventory(**{**inv.__dict__, "gpus": gpus})


@pytest.mark.parametrize("named", [("free",), ("free", "held")])
async def test_a_hello_naming_another_nodes_gpu_is_refused_and_leaves_that_node_alone(tmp_path, named):
    """Node 2 says hello with a new GPU that carries node 1's free GPU's UUID (before issue 23
    the plane deleted node 1's row and made it node 2's), or with that and the UUID of the GPU
    node 1's replica holds."""
    first, second, credential, second_inventory = await sync_to_async(_two_nodes)(tmp_path)

    def node_1_gpus():
        held = Gpu.objects.get(node=first, replica__isnull=False)
        free = Gpu.objects.filter(node=first, replica__isnull=True).order_by("index").first()
        return {"held": held.uuid, "free": free.uuid}, _rows(first.pk), _rows(second.pk)

    uuids, first_before, second_before = await sync_to_async(node_1_gpus)()
    stolen = [uuids[which] for which in named]
    communicator, connected = await connect(credential)
    assert connected
    await send(communicator, p.Hello(inventory=_naming(second_inventory, stolen)))
    answer = await receive(communicator)

    # Node 1 keeps every row as it was, the replica's GPU assignment included; node 2 applied
    # nothing of the refused inventory and did not come online.
    assert await sync_to_async(_rows)(first.pk) == first_before
    assert await sync_to_async(_rows)(second.pk) == second_before
    second_now = await sync_to_async(Node.objects.get)(pk=second.pk)
    assert second_now.status == Node.Status.JOINING

    assert isinstance(answer, p.Error) and answer.refused_type == "hello", answer
    assert all(uuid in answer.message for uuid in stolen)
    assert "hgx-1" not in answer.message  # the lying node learns nothing of the fleet
    (event,) = await sync_to_async(lambda: list(NodeEvent.objects.filter(node=second)))()
    assert event.kind == "inventory_refused" and stolen[0] in event.message and "hgx-1" in event.message
    assert {c["uuid"] for c in event.detail["claimed_elsewhere"]} == set(stolen)
    assert {c["node_id"] for c in event.detail["claimed_elsewhere"]} == {first.pk}
    assert not await sync_to_async(NodeEvent.objects.filter(node=first).exists)()

    # Ungreeted, the node can do nothing else on this socket; an honest hello is then served.
    await send(communicator, p.Heartbeat())
    refused = await receive(communicator)
    assert isinstance(refused, p.Error) and refused.refused_type == "heartbeat"
    await send(communicator, p.Hello(inventory=second_inventory))
    assert isinstance(await receive(communicator), p.Desired)
    assert await sync_to_async(_rows)(first.pk) == first_before
    assert await sync_to_async(Gpu.objects.filter(node=second).count)() == 8
    await communicator.disconnect()


async def test_a_hello_naming_one_uuid_twice_is_refused(tmp_path):
    _, second, credential, second_inventory = await sync_to_async(_two_nodes)(tmp_path)
    twice = second_inventory.gpus[0]["uuid"]
    communicator, _ = await connect(credential)
    await send(communicator, p.Hello(inventory=_naming(second_inventory, [twice, twice])))
    answer = await receive(communicator)
    assert isinstance(answer, p.Error) and answer.refused_type == "hello" and "twice" in answer.message
    (event,) = await sync_to_async(lambda: list(NodeEvent.objects.filter(node=second)))()
    assert event.detail["duplicated"] == [twice]
    await communicator.disconnect()


async def test_a_node_repeating_a_refused_hello_adds_no_rows(tmp_path):
    """A lying node that says the same refused hello in a loop is refused every time, and
    operators get one event for it, not one row per hello."""
    _, second, credential, second_inventory = await sync_to_async(_two_nodes)(tmp_path)
    twice = second_inventory.gpus[0]["uuid"]
    communicator, _ = await connect(credential)
    for _ in range(5):
        await send(communicator, p.Hello(inventory=_naming(second_inventory, [twice, twice])))
        answer = await receive(communicator)
        assert isinstance(answer, p.Error) and answer.refused_type == "hello"
    assert await sync_to_async(NodeEvent.objects.filter(node=second).count)() == 1
    await communicator.disconnect()


def test_a_join_naming_another_nodes_gpu_is_refused_and_keeps_its_token(client, tmp_path):
    first, _, _, _ = _two_nodes(tmp_path)
    before = _rows(first.pk)
    stolen = Gpu.objects.filter(node=first, replica__isnull=True).first().uuid
    made = services.node_create(hostname="hgx-3", hardware_type=first.hardware_type, location=first.location)
    forged = _naming(inventory(tmp_path / "three"), [stolen])
    response = client.post("/api/v1/nodes/join", {"token": made.join_token, "inventory": asdict(forged)},
                           content_type="application/json")
    assert response.status_code == 409, response.content
    assert stolen in response.json()["detail"]
    assert _rows(first.pk) == before and not Gpu.objects.filter(node=made.node).exists()
    assert JoinToken.objects.get(node=made.node).used_at is None  # refused, not spent
    assert NodeEvent.objects.get(node=made.node).kind == "inventory_refused"


async def test_a_nodes_other_reports_about_shared_names_stay_on_it(tmp_path):
    """Identical boards share PCI addresses, and a node may name any replica id it likes: a
    heartbeat's GPU verdict and a hello's replica reports act on the sender's own rows only.
    (A guard that passed before issue 23 too: it fails if either lookup loses its node filter.)"""
    first, second, credential, second_inventory = await sync_to_async(_two_nodes)(tmp_path)

    def node_1_state():
        held = Gpu.objects.select_related("replica").get(node=first, replica__isnull=False)
        return held.pci_bdf, str(held.replica.uid), held.replica.state, _rows(first.pk)

    shared_bdf, replica_id, replica_state, first_before = await sync_to_async(node_1_state)()
    communicator, _ = await connect(credential)
    await send(communicator, p.Hello(inventory=second_inventory, replicas=[
        p.ReplicaReport(replica_id=replica_id, state="failed", reason="forged by node 2")]))
    assert isinstance(await receive(communicator), p.Desired)
    await send(communicator, p.Heartbeat(gpu_health=[{"pci_bdf": shared_bdf, "usable": False, "reason": "forged"}]))
    await send(communicator, p.Heartbeat())  # answered in order: once this one is in, so is the first

    def second_gpu_health():
        return Gpu.objects.get(node=second, pci_bdf=shared_bdf).health

    for _ in range(50):
        if await sync_to_async(second_gpu_health)() == "out":
            break
        await asyncio.sleep(0.1)
    assert await sync_to_async(second_gpu_health)() == "out"  # its own GPU at that address
    assert await sync_to_async(_rows)(first.pk) == first_before
    replica = await sync_to_async(Replica.objects.get)(uid=replica_id)
    assert (replica.state, replica.node_id) == (replica_state, first.pk)
    await communicator.disconnect()
