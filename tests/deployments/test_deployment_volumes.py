"""A deployment's volumes against the real database: attach rules (rw one replica and one
deployment, ro shared, another tenant's id unknown), placement on the volume's node and its free
volume space, the wait while that node is away, per-replica volumes across scale 2 -> 1 -> 2,
the erase flow through the agent consumer's sinks, and the 409 while attached."""

from __future__ import annotations

import pytest
from django.utils import timezone

from cloud.deployments.models import Event, Replica
from cloud.deployments.services import deployment_delete, deployment_update
from cloud.deployments.services.agents import AgentSink
from cloud.deployments.services.placement import schedule_pending
from cloud.exceptions import Conflict, InvalidInput
from nodes.models import Node
from tests.deployments.factories import report
from tests.deployments.test_placement import cpu_node, deploy
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory
from volumes import services as volume_services
from volumes.models import Volume
from volumes.services import Requested
from volumes.sink import NodeVolumeSink

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant(db):
    return TenantFactory(max_gpus=1000, max_deployments=1000, max_volume_gib=10_000)


@pytest.fixture
def cpu(db):
    return HardwareTypeFactory(slug="cpu-v", gpu_model="none", gpus_per_node=4, allowed_gpu_counts=[0], cpu_only=True)


@pytest.fixture
def loc(db):
    return LocationFactory(slug="vol-loc")


def node(cpu, loc, free=500.0, **fields):
    return cpu_node(cpu, location=loc, free_volume_gib=free, **fields)


def volume(tenant, loc, name="data", size=50):
    return volume_services.volume_create(tenant=tenant, actor=None, name=name, size_gib=size, location_id=loc.id)


def attach(volume, path="/data", mode="rw"):
    return Requested(attach=[{"volume_id": str(volume.pk), "mount_path": path, "mode": mode}])


def mounts(deployment):
    return {r.ordinal: [(m.volume_id, m.mount_path, m.mode) for m in
                        AgentSink().desired(node_id=r.node_id)[0].spec.volumes]
            for r in deployment.replicas.filter(node__isnull=False)}


def test_a_volume_gets_the_node_of_its_first_replica_and_keeps_its_replicas_there(tenant, cpu, loc):
    first, second = node(cpu, loc), node(cpu, loc)
    vol = volume(tenant, loc)
    d = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    assert schedule_pending() == 1
    (replica,) = d.replicas.all()
    vol.refresh_from_db()
    assert vol.node_id == replica.node_id and vol.state == "ready"
    spec = AgentSink().desired(node_id=replica.node_id)[0].spec
    assert [(m.volume_id, m.size_gib, m.mount_path, m.mode) for m in spec.volumes] == [(str(vol.pk), 50, "/data", "rw")]
    # The same volume, read-only by two replicas once the first deployment dropped it: its node
    # only, though the other node is as empty.
    report(replica, "running")
    deployment_update(tenant=tenant, actor=None, deployment_id=d.pk, changes={"volumes": Requested()})
    d2 = deploy(tenant, cpu, gpus=0, replicas=2, volumes=attach(vol, mode="ro"))
    schedule_pending()
    assert {r.node_id for r in d2.replicas.all()} == {vol.node_id}
    assert {first.pk, second.pk} >= {vol.node_id}


def test_rw_is_one_replica_and_one_deployment_ro_is_shared(tenant, cpu, loc):
    node(cpu, loc)
    vol = volume(tenant, loc)
    with pytest.raises(InvalidInput, match="read-write"):
        deploy(tenant, cpu, gpus=0, replicas=2, volumes=attach(vol))
    deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    with pytest.raises(Conflict, match="belongs to one deployment"):
        deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    with pytest.raises(Conflict, match="read-write"):
        deploy(tenant, cpu, gpus=0, volumes=attach(vol, mode="ro"))
    shared = volume(tenant, loc, name="weights")
    a = deploy(tenant, cpu, gpus=0, replicas=2, volumes=attach(shared, mode="ro"))
    b = deploy(tenant, cpu, gpus=0, volumes=attach(shared, mode="ro"))
    assert schedule_pending() == 4
    shared.refresh_from_db()
    assert {r.node_id for r in [*a.replicas.all(), *b.replicas.all()]} == {shared.node_id}


def test_scaling_past_one_replica_with_an_rw_volume_is_refused(tenant, cpu, loc):
    vol = volume(tenant, loc)
    d = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    with pytest.raises(InvalidInput, match="read-write"):
        deployment_update(tenant=tenant, actor=None, deployment_id=d.pk, changes={"replica_count": 2})


def test_another_tenants_volume_is_unknown(tenant, cpu, loc):
    theirs = volume(TenantFactory(), loc)
    with pytest.raises(InvalidInput, match="No volume") as refused:
        deploy(tenant, cpu, gpus=0, volumes=attach(theirs))
    with pytest.raises(InvalidInput) as missing:
        deploy(tenant, cpu, gpus=0, volumes=Requested(attach=[{"volume_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                                                               "mount_path": "/d", "mode": "rw"}]))
    assert refused.value.errors[0]["code"] == missing.value.errors[0]["code"] == "unknown_volume"
    assert not theirs.attachments.exists()


def test_a_volume_in_another_location_is_400(tenant, cpu, loc):
    vol = volume(tenant, LocationFactory(slug="elsewhere"))
    with pytest.raises(InvalidInput, match="location"):
        deploy(tenant, cpu, gpus=0, location_ids=[loc.id], volumes=attach(vol))


def test_placement_respects_the_nodes_free_volume_space(tenant, cpu, loc):
    small = node(cpu, loc, free=60.0)
    big = node(cpu, loc, free=500.0)
    a = deploy(tenant, cpu, gpus=0, volumes=attach(volume(tenant, loc, "a", 50)))
    b = deploy(tenant, cpu, gpus=0, volumes=attach(volume(tenant, loc, "b", 50)))
    c = deploy(tenant, cpu, gpus=0, volumes=attach(volume(tenant, loc, "c", 460)))
    assert schedule_pending() == 2
    placed = {d.pk: d.replicas.get().node_id for d in (a, b)}
    # 60 GiB free holds one 50 GiB volume: the other went to the big node (its file not made yet
    # counts against the space), and 450 GiB fits nowhere now.
    assert sorted(placed.values()) == sorted([small.pk, big.pk])
    waiting = c.replicas.get()
    assert waiting.node_id is None and "GiB free for its new volumes" in waiting.reason


def test_a_replica_waits_for_its_volumes_node_with_that_reason(tenant, cpu, loc):
    home = node(cpu, loc)
    vol = volume(tenant, loc)
    d = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    schedule_pending()
    replica = d.replicas.get()
    report(replica, "running")
    # Stopped, the node goes away, started again: the new incarnation waits for that node.
    from cloud.deployments.services import deployment_start, deployment_stop
    deployment_stop(tenant=tenant, actor=None, deployment_id=d.pk)
    report(replica, "stopped")
    Node.objects.filter(pk=home.pk).update(status=Node.Status.OFFLINE)
    node(cpu, loc)  # room elsewhere does not help
    deployment_start(tenant=tenant, actor=None, deployment_id=d.pk)
    schedule_pending()
    schedule_pending()
    new = d.replicas.exclude(pk=replica.pk).get()
    assert new.node_id is None
    assert new.reason.startswith(f"volume data is on node {home.hostname}, which is offline")
    assert Event.objects.filter(deployment=d, type="volume.unavailable").count() == 1  # once, not every pass
    Node.objects.filter(pk=home.pk).update(status=Node.Status.ONLINE, last_heartbeat=timezone.now())
    assert schedule_pending() == 1
    new.refresh_from_db()
    assert new.node_id == home.pk


def test_per_replica_volumes_follow_their_ordinals_across_scale_down_and_up(tenant, cpu, loc):
    node(cpu, loc)
    node(cpu, loc)
    template = Requested(template={"size_gib": 20, "mount_path": "/root/.ollama", "keep": False})
    d = deploy(tenant, cpu, gpus=0, replicas=2, volumes=template)
    assert schedule_pending() == 2
    first = {o: m for o, m in mounts(d).items()}
    assert len({m[0][0] for m in first.values()}) == 2
    owned = {v.ordinal: v for v in Volume.objects.filter(owner_deployment=d)}
    assert {o: str(v.pk) for o, v in owned.items()} == {o: m[0][0] for o, m in first.items()}
    for r in d.replicas.all():
        report(r, "running")
    deployment_update(tenant=tenant, actor=None, deployment_id=d.pk, changes={"replica_count": 1})
    gone = d.replicas.get(ordinal=1, generation=1)
    report(gone, "stopped")
    deployment_update(tenant=tenant, actor=None, deployment_id=d.pk, changes={"replica_count": 2})
    assert schedule_pending() == 1
    back = d.replicas.get(ordinal=1, generation=2)
    assert back.node_id == owned[1].node_id
    spec = next(x.spec for x in AgentSink().desired(node_id=back.node_id) if x.replica_id == str(back.uid))
    assert [m.volume_id for m in spec.volumes] == [str(owned[1].pk)]
    assert Volume.objects.filter(owner_deployment=d).count() == 2


def test_delete_is_409_while_attached_then_erased_by_its_node(tenant, cpu, loc):
    home = node(cpu, loc)
    vol = volume(tenant, loc)
    d = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    schedule_pending()
    replica = d.replicas.get()
    with pytest.raises(Conflict, match="attached"):
        volume_services.volume_delete(volume=vol)
    report(replica, "running")
    deployment_delete(tenant=tenant, actor=None, deployment_id=d.pk)
    assert volume_services.selectors.volume_get(tenant=tenant, volume_id=vol.pk).attachments.all().count() == 0
    sink = NodeVolumeSink()
    sink.report(node_id=home.pk, volumes={str(vol.pk): 50})
    # Its VM is still stopping: no erase yet.
    with pytest.raises(Conflict, match="held by a VM"):
        volume_services.volume_delete(volume=vol)
    report(replica, "stopped")
    volume_services.volume_delete(volume=vol)
    vol.refresh_from_db()
    assert vol.state == "deleting"
    assert sink.erasable(node_id=home.pk) == [str(vol.pk)]
    sink.report(node_id=home.pk, volumes={str(vol.pk): 50})  # not erased yet
    vol.refresh_from_db()
    assert vol.state == "deleting"
    sink.report(node_id=home.pk, volumes={})
    vol.refresh_from_db()
    assert vol.state == "deleted" and vol.deleted_at is not None
    assert sink.erasable(node_id=home.pk) == []
    assert Event.objects.filter(tenant=tenant, type="volume.deleted", payload__volume_id=str(vol.pk)).exists()


def test_a_per_replica_volume_is_erased_with_its_deployment_unless_kept(tenant, cpu, loc):
    node(cpu, loc)
    erased = deploy(tenant, cpu, gpus=0, volumes=Requested(template={"size_gib": 5, "mount_path": "/w", "keep": False}))
    kept = deploy(tenant, cpu, gpus=0, volumes=Requested(template={"size_gib": 5, "mount_path": "/w", "keep": True}))
    schedule_pending()
    for d in (erased, kept):
        report(d.replicas.get(), "stopped")
        deployment_delete(tenant=tenant, actor=None, deployment_id=d.pk)
    assert Volume.objects.get(owner_deployment=erased).state == "deleting"
    assert Volume.objects.get(owner_deployment=kept).state == "ready"


def test_an_rw_ordinal_never_surges_its_restart_waits_for_the_old_vm(tenant, cpu, loc):
    node(cpu, loc)
    vol = volume(tenant, loc)
    d = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    schedule_pending()
    old = d.replicas.get()
    report(old, "running", host_port=30000)
    from cloud.deployments.services import deployment_restart
    deployment_restart(tenant=tenant, actor=None, deployment_id=d.pk)
    schedule_pending()
    new = d.replicas.exclude(pk=old.pk).get()
    old.refresh_from_db()
    assert new.node_id is None and "still held by generation 1" in new.reason
    assert old.desired == Replica.Desired.STOP  # handed over: stopping, not serving beside its successor
    report(old, "stopped")
    assert schedule_pending() == 1


def test_a_read_only_mount_waits_while_a_deleted_deployments_vm_still_writes_the_volume(tenant, cpu, loc):
    # Issue 26, found end to end (tests/e2e/test_volumes_run.py): the ro replica was placed at once,
    # and QEMU refused to open the file the stopping rw VM still held ("Failed to get shared
    # write lock"), failing the replica for good.
    node(cpu, loc)
    vol = volume(tenant, loc)
    writer = deploy(tenant, cpu, gpus=0, volumes=attach(vol))
    schedule_pending()
    old = writer.replicas.get()
    report(old, "running", host_port=30000)
    deployment_delete(tenant=tenant, actor=None, deployment_id=writer.pk)  # its VM is stopping
    reader = deploy(tenant, cpu, gpus=0, volumes=attach(vol, mode="ro"))
    schedule_pending()
    waiting = reader.replicas.get()
    assert waiting.node_id is None
    assert f"still held read-write by generation 1 of ordinal 0 of deployment {writer.name}" in waiting.reason
    report(old, "stopped")  # the VM is gone: the volume is free to read
    assert schedule_pending() == 1
    waiting.refresh_from_db()
    vol.refresh_from_db()
    assert waiting.node_id == vol.node_id is not None
    # Readers never wait for each other.
    other = deploy(tenant, cpu, gpus=0, volumes=attach(vol, mode="ro"))
    assert schedule_pending() == 1 and other.replicas.get().node_id == vol.node_id
