"""The agent consumer at /ws/v1/agent/ over Channels' in-process communicator, with the real
Redis channel layer and PostgreSQL: authentication before the socket opens, hello → desired,
reports moving replicas, refusals that keep the connection, logs acknowledged, and node.sync
turning into replica.start / replica.stop (a serving replica's once its drain ends). (tests/e2e drives the same over a real daphne.)"""

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from cloud.asgi import application
from cloud.deployments.models import Deployment, LogLine, Replica
from cloud.deployments.services import schedule_pending
from cloud.deployments.services.agents import AgentSink
from cloud.deployments.services.drain import drains_end
from nodes import services
from protocol import wire as p
from nodes.models import CpuSlot
from tests.deployments.factories import deployment_for
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)

INVENTORY = p.Inventory(hostname="box", agent_version="test", cpus=2, memory_mib=4096, disk_gib=20, accelerator="tcg")


def _joined_node():
    hardware = HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=2, allowed_gpu_counts=[0])
    made = services.node_create(hostname="node-a", hardware_type=hardware, location=LocationFactory(),
                                public_address="127.0.0.1")
    node, credential = services.node_join(token=made.join_token, inventory=INVENTORY)
    return node, credential, hardware


async def connect(credential: str | None):
    headers = [(b"authorization", f"Bearer {credential}".encode())] if credential else []
    communicator = WebsocketCommunicator(application, "/ws/v1/agent/", headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def send(communicator, message: p.Message):
    await communicator.send_to(text_data=p.encode(message))


async def receive(communicator) -> p.Message:
    return p.decode(await communicator.receive_from(timeout=5), allowed=p.PLANE_MESSAGES)


async def handled(communicator) -> None:
    """Returns once the consumer has handled every frame sent before, and answered none of them:
    it handles frames in order, and answers a refused one with an error frame."""
    await communicator.send_to(text_data="{a barrier, not JSON")
    answer = await receive(communicator)
    assert isinstance(answer, p.Error) and "not JSON" in answer.message, answer


async def hello(communicator, replicas=()):
    await send(communicator, p.Hello(inventory=INVENTORY, replicas=list(replicas)))
    desired = await receive(communicator)
    assert isinstance(desired, p.Desired)
    return desired


@pytest.mark.parametrize("credential", [None, "gnode_1_wrong", "not-a-credential"])
async def test_anything_but_a_node_credential_is_refused_before_the_socket_opens(credential):
    await sync_to_async(_joined_node)()
    communicator, connected = await connect(credential)
    assert not connected


async def test_hello_brings_the_node_online_and_answers_with_its_desired_set():
    node, credential, hardware = await sync_to_async(_joined_node)()
    tenant = await sync_to_async(TenantFactory)()
    deployment = await sync_to_async(deployment_for)(tenant, hardware_id=hardware.pk, gpus_per_container=0,
                                                      traffic_port=8080, secret_env={"TOKEN": "s3cret"})
    communicator, connected = await connect(credential)
    assert connected
    desired = await hello(communicator)
    assert desired.replicas == []  # nothing placed before the node was online
    await sync_to_async(schedule_pending)()
    start = await receive(communicator)  # placement notifies the node's consumer
    assert isinstance(start, p.ReplicaStart)
    replica = await sync_to_async(Replica.objects.get)(deployment=deployment)
    assert start.replica.replica_id == str(replica.uid) == start.replica.spec.name
    assert start.replica.spec.secret_env == {"TOKEN": "s3cret"} and start.replica.spec.traffic_port == 8080
    assert await sync_to_async(CpuSlot.objects.filter(replica=replica).count)() == 1
    await communicator.disconnect()


async def _placed(credential, hardware):
    tenant = await sync_to_async(TenantFactory)()
    deployment = await sync_to_async(deployment_for)(tenant, hardware_id=hardware.pk, gpus_per_container=0, traffic_port=8080)
    communicator, _ = await connect(credential)
    await hello(communicator)
    await sync_to_async(schedule_pending)()
    start = await receive(communicator)
    return communicator, deployment, start.replica.replica_id


async def test_reports_move_the_replica_and_the_deployment_and_stop_frees_the_slot():
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, deployment, replica_id = await _placed(credential, hardware)
    for state in ("pulling", "booting", "running"):
        await send(communicator, p.ReplicaStatus(report=p.ReplicaReport(
            replica_id=replica_id, state=state, address="192.0.2.2", host_port=30001)))
    await handled(communicator)
    deployment = await sync_to_async(Deployment.objects.get)(pk=deployment.pk)
    replica = await sync_to_async(Replica.objects.get)(uid=replica_id)
    assert (deployment.status, replica.state, replica.host_port) == ("running", "running", 30001)
    assert replica.started_at is not None

    from cloud.deployments.services import deployment_stop

    await sync_to_async(lambda: deployment_stop(tenant=deployment.tenant, actor=None, deployment_id=deployment.pk))()
    # It served: it drains first (issue 25), still in the node's desired set, and the node is
    # told to stop it when the drain ends.
    replica = await sync_to_async(Replica.objects.get)(uid=replica_id)
    assert replica.drain_until is not None
    assert [d.replica_id for d in await sync_to_async(AgentSink().desired)(node_id=node.pk)] == [replica_id]
    assert await sync_to_async(drains_end)(now=replica.drain_until) == 1
    stop = await receive(communicator)
    assert isinstance(stop, p.ReplicaStop) and stop.replica_id == replica_id and stop.grace_s == 10.0
    assert await sync_to_async(CpuSlot.objects.filter(replica__isnull=False).count)() == 1  # not confirmed yet
    await send(communicator, p.ReplicaStatus(report=p.ReplicaReport(replica_id=replica_id, state="stopped", exit_code=0)))
    await handled(communicator)
    deployment = await sync_to_async(Deployment.objects.get)(pk=deployment.pk)
    replica = await sync_to_async(Replica.objects.get)(uid=replica_id)
    assert (deployment.status, replica.state) == ("stopped", "stopped")
    assert replica.stopped_at is not None and replica.vm_gone
    assert await sync_to_async(CpuSlot.objects.filter(replica__isnull=False).count)() == 0
    await communicator.disconnect()


@pytest.mark.parametrize("frame,expect", [
    ("{not json", "not JSON"),
    (json.dumps({"type": "mystery", "version": 1}), "unknown message type"),
    (json.dumps({"type": "heartbeat", "version": 99}), "version"),
    (json.dumps({"type": "desired", "version": 1, "replicas": []}), "unknown message type"),  # plane-only
    ("x" * (p.MAX_FRAME_BYTES + 1), "exceeds"),
])
async def test_bad_frames_get_an_error_frame_and_the_consumer_keeps_serving(frame, expect):
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, _ = await connect(credential)
    await hello(communicator)
    await communicator.send_to(text_data=frame)
    error = await receive(communicator)
    assert isinstance(error, p.Error) and expect in error.message
    await send(communicator, p.Heartbeat())
    await handled(communicator)  # still served
    await communicator.disconnect()


async def test_a_frame_before_hello_is_refused():
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, _ = await connect(credential)
    await send(communicator, p.Heartbeat())
    error = await receive(communicator)
    assert isinstance(error, p.Error) and "hello" in error.message
    await communicator.disconnect()


async def test_a_report_about_a_replica_on_another_node_is_refused_and_changes_nothing():
    node, credential, hardware = await sync_to_async(_joined_node)()
    other = await sync_to_async(lambda: services.node_create(hostname="node-b", hardware_type=hardware,
                                                             location=LocationFactory()))()
    other_node, other_credential = await sync_to_async(services.node_join)(token=other.join_token, inventory=INVENTORY)
    communicator, deployment, replica_id = await _placed(credential, hardware)
    intruder, _ = await connect(other_credential)
    await hello(intruder)
    await send(intruder, p.ReplicaStatus(report=p.ReplicaReport(replica_id=replica_id, state="failed", reason="forged")))
    error = await receive(intruder)
    assert isinstance(error, p.Error) and "not placed on this node" in error.message
    await send(intruder, p.Logs(replica_id=replica_id, lines=[p.LogEntry(seq=1, ts=1.0, stream="stdout", message="forged")]))
    assert isinstance(await receive(intruder), p.Error)
    replica = await sync_to_async(Replica.objects.get)(uid=replica_id)
    assert replica.state == "pending" and await sync_to_async(LogLine.objects.count)() == 0
    await send(intruder, p.ReplicaStatus(report=p.ReplicaReport(replica_id=str(uuid.uuid4()), state="running")))
    assert isinstance(await receive(intruder), p.Error)
    await intruder.disconnect()
    await communicator.disconnect()


async def test_logs_are_stored_once_and_acknowledged_and_the_ack_is_in_the_next_desired():
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, deployment, replica_id = await _placed(credential, hardware)
    lines = [p.LogEntry(seq=i, ts=1_700_000_000.0 + i, stream="stdout", message=f"line {i}") for i in range(1, 4)]
    await send(communicator, p.Logs(replica_id=replica_id, lines=lines))
    ack = await receive(communicator)
    assert isinstance(ack, p.LogsAck) and ack.seq == 3
    await send(communicator, p.Logs(replica_id=replica_id, lines=lines[1:]))  # a resend after a reconnect
    assert (await receive(communicator)).seq == 3
    assert await sync_to_async(LogLine.objects.count)() == 3
    await communicator.disconnect()
    again, _ = await connect(credential)
    desired = await hello(again)
    assert [(d.replica_id, d.acked_seq) for d in desired.replicas] == [(replica_id, 3)]
    await again.disconnect()


async def test_batches_queued_behind_a_slow_store_are_stored_together_in_order_and_acknowledged(monkeypatch):
    from cloud.deployments.services import agents

    stores = []
    real = agents.AgentSink.logs

    def slow_logs(self, **kwargs):
        stores.append(len(kwargs["lines"]))
        import time
        time.sleep(0.3)  # the database is slow: the next batches queue up meanwhile
        return real(self, **kwargs)

    monkeypatch.setattr(agents.AgentSink, "logs", slow_logs)  # before connecting: the consumer binds it then
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, deployment, replica_id = await _placed(credential, hardware)
    for first in range(1, 51, 10):
        await send(communicator, p.Logs(replica_id=replica_id, lines=[
            p.LogEntry(seq=i, ts=1_700_000_000.0 + i, stream="stdout", message=f"line {i}") for i in range(first, first + 10)]))
    acks = []
    while not acks or acks[-1] < 50:
        acks.append((await receive(communicator)).seq)
    assert acks == sorted(acks) and stores[0] == 10 and len(stores) < 5 and sum(stores) == 50
    seqs = await sync_to_async(lambda: list(LogLine.objects.order_by("id").values_list("seq", flat=True)))()
    assert seqs == list(range(1, 51))
    await communicator.disconnect()


async def test_a_batch_the_plane_fails_to_store_is_never_acknowledged_and_the_agent_is_sent_to_reconnect(monkeypatch):
    from cloud.deployments.services import agents

    def broken(self, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(agents.AgentSink, "logs", broken)
    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, deployment, replica_id = await _placed(credential, hardware)
    await send(communicator, p.Logs(replica_id=replica_id, lines=[p.LogEntry(seq=1, ts=1.0, stream="stdout", message="a")]))
    output = await communicator.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4002}
    assert await sync_to_async(LogLine.objects.count)() == 0


async def test_heartbeats_record_how_far_each_replicas_log_goes_for_its_own_replicas_only():
    from django.core.cache import cache

    node, credential, hardware = await sync_to_async(_joined_node)()
    communicator, deployment, replica_id = await _placed(credential, hardware)
    stranger = str(uuid.uuid4())
    await send(communicator, p.Heartbeat(log_seqs={replica_id: 120, stranger: 5}))
    await handled(communicator)
    assert await sync_to_async(cache.get)(f"loghead:{replica_id}") == 120
    assert await sync_to_async(cache.get)(f"loghead:{stranger}") is None
    await communicator.disconnect()
