"""The scheduler (DESIGN section 6), against the real PostgreSQL: which node and which GPUs or
CPU slots a pending replica gets, which nodes it never gets, what it says while it waits, and
that four processes scheduling at once never hand one unit to two replicas."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, Replica
from cloud.deployments.services.placement import place, schedule_pending, units_release
from cloud.deployments.services.status import PENDING_REASON, replicas_stop
from nodes.models import CpuSlot, Gpu, Node
from nodes.services import slots_sync
from tests.deployments.factories import NodeFactory, deployment_for
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tenant(db):
    return TenantFactory(max_gpus=100_000, max_deployments=100_000)


@pytest.fixture
def hgx(db):
    return HardwareTypeFactory(slug="hgx-h100", gpu_model="NVIDIA H100 80GB HBM3", allowed_gpu_counts=[1, 2, 3, 4, 8])


@pytest.fixture
def cpu_small(db):
    return HardwareTypeFactory(slug="cpu-small", name="CPU small", gpu_model="none", gpus_per_node=4,
                               allowed_gpu_counts=[0], cpu_only=True, price_per_gpu_hour=Decimal("0.0100"))


def gpu_node(hardware, *, numa=(4, 4), nvlink=None, location=None, **fields) -> Node:
    """An online node with a fresh heartbeat and GPUs laid out like an HGX board: `numa` GPUs per
    NUMA node, one NVLink domain per NUMA node unless `nvlink` names one per GPU."""
    fields.setdefault("status", Node.Status.ONLINE)
    fields.setdefault("last_heartbeat", timezone.now())
    node = NodeFactory(hardware_type=hardware, location=location or LocationFactory(), **fields)
    numa_of = [n for n, count in enumerate(numa) for _ in range(count)]
    Gpu.objects.bulk_create([
        Gpu(node=node, index=i, uuid=f"GPU-{node.pk}-{i}", pci_bdf=f"0000:{0x18 + i:02x}:00.0", model=hardware.gpu_model,
            memory_mib=81559, numa_node=numa_node, nvlink_domain=nvlink[i] if nvlink else f"{node.hostname}/nv{numa_node}")
        for i, numa_node in enumerate(numa_of)
    ])
    return node


def cpu_node(hardware, **fields) -> Node:
    fields.setdefault("status", Node.Status.ONLINE)
    fields.setdefault("last_heartbeat", timezone.now())
    node = NodeFactory(hardware_type=hardware, **fields)
    slots_sync(node=node)
    return node


def deploy(tenant, hardware, *, gpus=1, replicas=1, **spec) -> Deployment:
    return deployment_for(tenant, hardware_id=hardware.id, gpus_per_container=gpus, replica_count=replicas, **spec)


def replicas_of(deployment) -> list[Replica]:
    return list(deployment.replicas.order_by("ordinal"))


def gpu_indexes(replica) -> list[int]:
    return sorted(replica.gpus.values_list("index", flat=True))


def test_it_claims_exactly_the_gpus_a_replica_asks_for(tenant, hgx):
    node = gpu_node(hgx)
    deployment = deploy(tenant, hgx, gpus=2)

    assert schedule_pending() == 1

    (replica,) = replicas_of(deployment)
    assert replica.node == node and replica.placed_at is not None and replica.state == Replica.State.PENDING
    assert replica.gpus.count() == 2 and replica.gpus.filter(node=node).count() == 2
    assert Gpu.objects.filter(node=node, replica__isnull=True).count() == 6
    assert replica.reason == f"placed on {node.hostname}: waiting for its agent to start the VM"
    assert Event.objects.filter(deployment=deployment, type="replica.placed", payload__node=node.hostname).exists()
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.STARTING


def test_a_placed_replica_is_not_placed_again(tenant, hgx):
    gpu_node(hgx)
    (replica,) = replicas_of(deploy(tenant, hgx, gpus=2))
    assert place(replica.pk) is True
    assert place(replica.pk) is None and schedule_pending() == 0
    assert Gpu.objects.filter(replica__isnull=False).count() == 2


def test_it_keeps_a_replica_on_one_numa_node_and_fills_the_fuller_one_first(tenant, hgx):
    node = gpu_node(hgx)  # NUMA 0: GPUs 0-3, NUMA 1: GPUs 4-7
    first = deploy(tenant, hgx, gpus=2)
    schedule_pending()
    four = deploy(tenant, hgx, gpus=4)  # NUMA 0 has only 2 left: all four from NUMA 1, none split
    schedule_pending()
    two = deploy(tenant, hgx, gpus=2)  # best fit among groups: NUMA 0's last two
    schedule_pending()

    assert gpu_indexes(replicas_of(first)[0]) == [0, 1]
    assert gpu_indexes(replicas_of(four)[0]) == [4, 5, 6, 7]
    assert gpu_indexes(replicas_of(two)[0]) == [2, 3]
    assert not Gpu.objects.filter(node=node, replica__isnull=True).exists()


def test_a_single_gpu_goes_to_the_nearly_full_numa_node(tenant, hgx):
    gpu_node(hgx)
    three = deploy(tenant, hgx, gpus=3)  # GPUs 0-2: NUMA 0 keeps one free, NUMA 1 all four
    schedule_pending()
    one = deploy(tenant, hgx, gpus=1)
    schedule_pending()
    assert gpu_indexes(replicas_of(three)[0]) == [0, 1, 2]
    assert gpu_indexes(replicas_of(one)[0]) == [3]


def test_it_keeps_a_replica_within_one_nvlink_domain(tenant, hgx):
    # One NUMA node, NVLink bridges in pairs (0-1, 2-3, 4-5, 6-7): a pair is never split.
    gpu_node(hgx, numa=(8,), nvlink=["a", "a", "b", "b", "c", "c", "d", "d"])
    one = deploy(tenant, hgx, gpus=1)
    schedule_pending()
    pair = deploy(tenant, hgx, gpus=2)
    schedule_pending()
    assert gpu_indexes(replicas_of(one)[0]) == [0]
    assert gpu_indexes(replicas_of(pair)[0]) == [2, 3]


def test_it_spans_numa_nodes_only_when_no_single_one_has_enough(tenant, hgx):
    node = gpu_node(hgx)
    deploy(tenant, hgx, gpus=3)  # GPUs 0-2 (NUMA 0)
    schedule_pending()
    deploy(tenant, hgx, gpus=3)  # GPUs 4-6 (NUMA 1): each NUMA node now has one free
    schedule_pending()
    pair = deploy(tenant, hgx, gpus=2)
    schedule_pending()
    (replica,) = replicas_of(pair)
    assert replica.node == node and gpu_indexes(replica) == [3, 7]


def test_it_spreads_a_deployments_replicas_over_nodes_before_best_fit(tenant, hgx):
    fuller = gpu_node(hgx)
    empty = gpu_node(hgx)
    deploy(tenant, hgx, gpus=4)  # best fit alone would now put both replicas below on `fuller`
    schedule_pending()
    assert Gpu.objects.filter(node=fuller, replica__isnull=False).count() == 4

    deployment = deploy(tenant, hgx, gpus=2, replicas=2)
    assert schedule_pending() == 2

    assert {r.node_id for r in replicas_of(deployment)} == {fuller.pk, empty.pk}


def test_once_every_node_has_one_of_its_replicas_best_fit_decides_again(tenant, hgx):
    fuller = gpu_node(hgx)
    empty = gpu_node(hgx)
    deploy(tenant, hgx, gpus=4)
    schedule_pending()
    deployment = deploy(tenant, hgx, gpus=1, replicas=3)

    assert schedule_pending() == 3

    on = [r.node_id for r in replicas_of(deployment)]
    # One on each node first; the third beside the first, on the node with fewer GPUs free.
    assert on == [fuller.pk, empty.pk, fuller.pk]


def test_best_fit_keeps_whole_nodes_free(tenant, hgx):
    first = gpu_node(hgx)
    second = gpu_node(hgx)
    small_a = deploy(tenant, hgx, gpus=1)
    schedule_pending()
    small_b = deploy(tenant, hgx, gpus=1)  # the fuller node, not the empty one
    schedule_pending()
    whole = deploy(tenant, hgx, gpus=8)
    assert schedule_pending() == 1

    assert replicas_of(small_a)[0].node == first and replicas_of(small_b)[0].node == first
    assert replicas_of(whole)[0].node == second and gpu_indexes(replicas_of(whole)[0]) == list(range(8))


def test_cpu_only_hardware_claims_one_slot_and_no_gpu(tenant, cpu_small):
    node = cpu_node(cpu_small)
    assert CpuSlot.objects.filter(node=node).count() == 4
    deployment = deploy(tenant, cpu_small, gpus=0, replicas=2)

    assert schedule_pending() == 2

    for replica in replicas_of(deployment):
        assert replica.node == node and replica.slots.count() == 1 and replica.gpus.count() == 0
    assert CpuSlot.objects.filter(node=node, replica__isnull=True).count() == 2


def test_a_cpu_only_replica_waits_when_every_slot_is_taken(tenant, cpu_small):
    cpu_node(cpu_small)
    deploy(tenant, cpu_small, gpus=0, replicas=4)
    assert schedule_pending() == 4
    late = deploy(tenant, cpu_small, gpus=0)

    assert schedule_pending() == 0

    (replica,) = replicas_of(late)
    assert replica.node is None and "a free slot on cpu-small" in replica.reason


def test_a_pinned_deployment_goes_to_its_node_only(tenant, hgx):
    gpu_node(hgx)  # the best fit, were it not pinned
    deploy(tenant, hgx, gpus=4)
    schedule_pending()
    pinned_to = gpu_node(hgx)
    deployment = deploy(tenant, hgx, gpus=2, replicas=2, node_id=pinned_to.pk)

    assert schedule_pending() == 2

    assert {r.node_id for r in replicas_of(deployment)} == {pinned_to.pk}


def test_a_deployment_pinned_to_a_cordoned_node_waits_and_says_so(tenant, hgx):
    gpu_node(hgx)
    cordoned = gpu_node(hgx, status=Node.Status.CORDONED)
    deployment = deploy(tenant, hgx, gpus=1, node_id=cordoned.pk)

    assert schedule_pending() == 0

    (replica,) = replicas_of(deployment)
    assert replica.node is None
    assert replica.reason.startswith(f"pinned to node {cordoned.hostname} (cordoned)")


def test_it_places_only_in_the_deployments_locations(tenant, hgx):
    us_east, eu_west = LocationFactory(slug="us-east"), LocationFactory(slug="eu-west")
    gpu_node(hgx, location=us_east)  # lower id, and just as empty
    in_eu = gpu_node(hgx, location=eu_west)
    deployment = deploy(tenant, hgx, gpus=1, replicas=2, location_ids=[eu_west.pk])

    assert schedule_pending() == 2

    assert {r.node_id for r in replicas_of(deployment)} == {in_eu.pk}


@pytest.mark.parametrize("fields", [
    {"status": Node.Status.OFFLINE},
    {"status": Node.Status.CORDONED},
    {"status": Node.Status.DRAINING},
    {"status": Node.Status.JOINING},
    {"last_heartbeat": None},
    {"stale": True},
], ids=["offline", "cordoned", "draining", "joining", "never-heard-from", "stale-heartbeat"])
def test_it_never_chooses_a_node_that_cannot_take_work(tenant, hgx, fields):
    if fields.pop("stale", False):
        fields["last_heartbeat"] = timezone.now() - timedelta(seconds=settings.NODE_LIVENESS_WINDOW_S + 5)
    unfit = gpu_node(hgx, **fields)
    deployment = deploy(tenant, hgx, gpus=1)

    assert schedule_pending() == 0

    (replica,) = replicas_of(deployment)
    assert replica.node is None and replica.state == Replica.State.PENDING
    assert not Gpu.objects.filter(node=unfit, replica__isnull=False).exists()


def test_it_never_chooses_a_node_of_another_hardware_type(tenant, hgx):
    gpu_node(HardwareTypeFactory(slug="a100"))
    deployment = deploy(tenant, hgx, gpus=1)
    assert schedule_pending() == 0
    assert replicas_of(deployment)[0].node is None


def test_no_capacity_leaves_the_replica_pending_with_a_reason_then_places_it_when_room_appears(tenant, hgx):
    us_east, eu_west = LocationFactory(slug="us-east"), LocationFactory(slug="eu-west")
    gpu_node(hgx, location=us_east, numa=(2, 2))  # four GPUs: too few for eight
    gpu_node(hgx, location=eu_west, status=Node.Status.OFFLINE)
    deployment = deploy(tenant, hgx, gpus=8, location_ids=[us_east.pk, eu_west.pk])

    assert schedule_pending() == 0

    (replica,) = replicas_of(deployment)
    assert replica.node is None and replica.state == Replica.State.PENDING
    assert replica.reason == (
        "no capacity: no node in us-east, eu-west has 8 free NVIDIA H100 80GB HBM3 GPU(s) (hgx-h100); "
        "1 of 2 hgx-h100 node(s) online, none with enough free"
    )
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.PENDING and replica.reason in deployment.status_reason
    assert not Gpu.objects.filter(replica__isnull=False).exists()

    roomy = gpu_node(hgx, location=eu_west)
    assert schedule_pending() == 1

    replica.refresh_from_db()
    assert replica.node == roomy and replica.gpus.count() == 8


def test_a_stopped_replica_is_not_placed(tenant, hgx):
    gpu_node(hgx)
    deployment = deploy(tenant, hgx, gpus=1)
    replicas_stop(deployment.replicas.all(), reason="stopped by the customer")
    assert schedule_pending() == 0
    assert not Gpu.objects.filter(replica__isnull=False).exists()


def test_units_release_frees_the_gpus(tenant, hgx):
    node = gpu_node(hgx)
    (replica,) = replicas_of(deploy(tenant, hgx, gpus=8))
    schedule_pending()
    assert Gpu.objects.filter(node=node, replica=replica).count() == 8

    assert units_release(replica) is True

    assert Gpu.objects.filter(node=node, replica__isnull=True).count() == 8
    assert units_release(replica) is False
    (another,) = replicas_of(deploy(tenant, hgx, gpus=8))
    assert schedule_pending() == 1 and another.gpus.count() == 8


def test_units_release_frees_the_slot(tenant, cpu_small):
    node = cpu_node(cpu_small)
    (replica,) = replicas_of(deploy(tenant, cpu_small, gpus=0))
    schedule_pending()
    assert units_release(replica) is True
    assert CpuSlot.objects.filter(node=node, replica__isnull=True).count() == 4


@pytest.mark.django_db(transaction=True)
def test_placing_never_waits_for_a_locked_deployment_while_holding_its_replica(tenant, hgx):
    """Stopping a deployment locks it, then its replicas (the order DESIGN and status.py use).
    A placement that locked the replica first and then waited for the deployment deadlocked
    against it; now a busy deployment is skipped and left to the next pass."""
    gpu_node(hgx)
    deployment = deploy(tenant, hgx, gpus=1)
    (replica,) = replicas_of(deployment)
    results = []

    def schedule():
        try:
            results.append(place(replica.pk))
        finally:
            connection.close()

    with transaction.atomic():
        Deployment.objects.select_for_update().get(pk=deployment.pk)  # what deployment_stop holds
        worker = threading.Thread(target=schedule)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "place() waited for the deployment lock"
        assert results == [None]
        replicas_stop(Replica.objects.filter(pk=replica.pk), reason="stopped by the customer")

    replica.refresh_from_db()
    assert replica.state == Replica.State.STOPPED and replica.node is None
    assert schedule_pending() == 0 and not Gpu.objects.filter(replica__isnull=False).exists()


@pytest.mark.django_db(transaction=True)
def test_units_another_worker_holds_are_contention_not_a_shortage(tenant, hgx):
    node = gpu_node(hgx)
    (replica,) = replicas_of(deploy(tenant, hgx, gpus=2))
    results = []

    def schedule():
        try:
            results.append(place(replica.pk))
        finally:
            connection.close()

    with transaction.atomic():
        list(Gpu.objects.select_for_update().filter(node=node))  # another worker mid-claim
        worker = threading.Thread(target=schedule)
        worker.start()
        worker.join(timeout=10)
        assert results == [None]

    replica.refresh_from_db()
    assert replica.node is None and "no capacity" not in replica.reason
    assert schedule_pending() == 1


WORKER = """
import sys
import django
django.setup()
from django.db import connection
from cloud.deployments.services import schedule_pending
connection.ensure_connection()
print("ready", flush=True)
sys.stdin.readline()
print(schedule_pending(), flush=True)
"""


def _test_database_url() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_four_processes_scheduling_500_replicas_never_double_book_a_unit(tenant, hgx, cpu_small):
    """Three pools, so every outcome is exact: 2-GPU replicas on too few 8-GPU nodes (48 of 100
    fit), 1-GPU replicas with room to spare (all 200), CPU-only replicas on too few slots (160
    of 200). Mostly one replica per deployment, shuffled, so the processes race for the same
    nodes (siblings of one deployment are placed one at a time); ten 10-replica deployments
    beside them, whose siblings the processes skip and come back to. Four OS processes,
    released together, each run one scheduling pass."""
    scarce, roomy = hgx, HardwareTypeFactory(slug="hgx-roomy", allowed_gpu_counts=[1, 2, 4, 8])
    cpu_small.gpus_per_node = 8
    cpu_small.save()
    for _ in range(12):
        gpu_node(scarce)
    for _ in range(30):
        gpu_node(roomy)
    for _ in range(20):
        cpu_node(cpu_small)
    shapes = [(scarce, 2, 1)] * 100 + [(roomy, 1, 1)] * 100 + [(roomy, 1, 10)] * 10 + [(cpu_small, 0, 1)] * 200
    deployments = Deployment.objects.bulk_create([
        Deployment(tenant=tenant, name=f"race-{i}", image="ghcr.io/acme/app:1.0", hardware_type=hardware,
                   gpus_per_container=gpus, replica_count=count, price_per_gpu_hour=hardware.price_per_gpu_hour)
        for i, (hardware, gpus, count) in enumerate(shapes)
    ])
    replicas = [Replica(deployment=d, ordinal=o, reason=PENDING_REASON) for d in deployments for o in range(d.replica_count)]
    random.Random(14).shuffle(replicas)  # created_at follows this order: the scheduler's order
    Replica.objects.bulk_create(replicas)
    assert Replica.objects.filter(deployment__tenant=tenant, node__isnull=True).count() == 500

    # Liveness is not what this test is about: a slow CI machine must not age the heartbeats.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cloud.settings", "DATABASE_URL": _test_database_url(),
           "DB_POOL": "0", "CHANNELS_PREFIX": "gantry-test-placement", "NODE_LIVENESS_WINDOW_S": "3600"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(4)]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        for worker in workers:  # released together
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=90) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    reported = sum(int(out.strip().splitlines()[-1]) for out, _ in outputs)

    placed = list(Replica.objects.filter(node__isnull=False, deployment__tenant=tenant)
                  .select_related("deployment__hardware_type"))
    by_pool = {hw.slug: sum(1 for r in placed if r.deployment.hardware_type_id == hw.pk) for hw in (scarce, roomy, cpu_small)}
    assert by_pool == {"hgx-h100": 48, "hgx-roomy": 200, "cpu-small": 160}
    assert reported == len(placed) == 408  # each placement counted by exactly one process

    gpus, slots = {}, {}
    mine = {"replica__isnull": False, "node__hardware_type__in": (scarce, roomy, cpu_small)}
    for node_id, replica_id in Gpu.objects.filter(**mine).values_list("node_id", "replica_id"):
        gpus.setdefault(replica_id, []).append(node_id)
    for node_id, replica_id in CpuSlot.objects.filter(**mine).values_list("node_id", "replica_id"):
        slots.setdefault(replica_id, []).append(node_id)
    for replica in placed:
        cpu_only = replica.deployment.hardware_type.cpu_only
        held = slots.get(replica.pk, []) if cpu_only else gpus.get(replica.pk, [])
        # A unit claimed twice would leave its first claimant short (the second write wins).
        assert len(held) == (1 if cpu_only else replica.deployment.gpus_per_container), replica
        assert set(held) == {replica.node_id}, f"{replica} holds units on another node"
        assert replica.pk not in (gpus if cpu_only else slots)
    assert set(gpus) | set(slots) <= {r.pk for r in placed}  # nothing held by an unplaced replica
    assert len(gpus) + len(slots) == len(placed)
