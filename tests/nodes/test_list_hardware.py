from decimal import Decimal

import pytest

from accounts.models import Tenant
from cloud.deployments.models import Deployment, Replica
from nodes.models import Node
from tests.conftest import client_for
from tests.factories import HardwareTypeFactory, LocationFactory
from tests.nodes.factories import NodeFactory


@pytest.fixture
def h100(db):
    return HardwareTypeFactory(slug="h100", name="8x H100 80GB SXM", allowed_gpu_counts=[1, 2, 4, 8],
                               price_per_gpu_hour=Decimal("2.4900"))


@pytest.fixture
def east(db):
    return LocationFactory(slug="us-east")


@pytest.fixture
def west(db):
    return LocationFactory(slug="us-west")


def _hardware(client, slug):
    return next(h for h in client.get("/api/v1/hardware").json()["hardware"] if h["slug"] == slug)


def _replica_on(node, *, state=Replica.State.RUNNING, gpus=()):
    tenant = Tenant.objects.get_or_create(slug="capacity-test", defaults={"name": "t"})[0]
    deployment = Deployment.objects.create(
        tenant=tenant, name=f"d-{Deployment.objects.count()}", image="hello", gpus_per_container=len(gpus),
        hardware_type=node.hardware_type, price_per_gpu_hour=node.hardware_type.price_per_gpu_hour,
    )
    replica = Replica.objects.create(deployment=deployment, ordinal=0, node=node, state=state)
    for gpu in gpus:
        gpu.replica = replica
        gpu.save(update_fields=["replica"])
    return replica


def test_it_shows_every_documented_field(as_alice, h100):
    hardware = _hardware(as_alice, "h100")
    assert hardware == {
        "id": h100.pk, "slug": "h100", "name": "8x H100 80GB SXM", "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpu_memory_gib": 80, "gpus_per_node": 8, "allowed_gpu_counts": [1, 2, 4, 8], "vcpus_per_gpu": 16,
        "memory_gib_per_gpu": 200, "price_per_gpu_hour": "2.4900", "cpu_only": False, "availability": [],
    }


def test_it_counts_free_gpus_per_location(as_alice, h100, east, west):
    NodeFactory(hardware_type=h100, location=east, gpus=8)
    NodeFactory(hardware_type=h100, location=east, gpus=8)
    NodeFactory(hardware_type=h100, location=west, gpus=8)
    availability = _hardware(as_alice, "h100")["availability"]
    assert availability == [
        {"location_id": east.pk, "location": "us-east", "simulated": False, "nodes_online": 2, "gpus_free": 16,
         "max_gpus_per_replica_now": 8},
        {"location_id": west.pk, "location": "us-west", "simulated": False, "nodes_online": 1, "gpus_free": 8,
         "max_gpus_per_replica_now": 8},
    ]


def test_allocated_gpus_are_not_free_and_a_replica_never_spans_nodes(as_alice, h100, east):
    first = NodeFactory(hardware_type=h100, location=east, gpus=8)
    second = NodeFactory(hardware_type=h100, location=east, gpus=8)
    _replica_on(first, gpus=list(first.gpus.all()[:5]))   # 3 left: the largest allowed count that fits is 2
    _replica_on(second, gpus=list(second.gpus.all()[:6]))  # 2 left
    (row,) = _hardware(as_alice, "h100")["availability"]
    assert row["gpus_free"] == 5
    assert row["max_gpus_per_replica_now"] == 2


@pytest.mark.parametrize("status", [Node.Status.OFFLINE, Node.Status.JOINING, Node.Status.CORDONED, Node.Status.DRAINING])
def test_only_online_nodes_count(as_alice, h100, east, status):
    NodeFactory(hardware_type=h100, location=east, gpus=8, status=status)
    assert _hardware(as_alice, "h100")["availability"] == []


def test_simulated_capacity_is_marked_and_kept_apart(as_alice, h100, east):
    NodeFactory(hardware_type=h100, location=east, gpus=8)
    NodeFactory(hardware_type=h100, location=east, gpus=8, simulated=True)
    availability = _hardware(as_alice, "h100")["availability"]
    assert [(row["simulated"], row["gpus_free"]) for row in availability] == [(False, 8), (True, 8)]


def test_cpu_only_kinds_count_free_replica_slots(as_alice, east):
    cpu = HardwareTypeFactory(slug="cpu", name="CPU only", gpu_model="none", gpu_memory_gib=0, gpus_per_node=4,
                              allowed_gpu_counts=[0], cpu_only=True)
    node = NodeFactory(hardware_type=cpu, location=east)
    _replica_on(node)
    _replica_on(node, state=Replica.State.STOPPED)
    hardware = _hardware(as_alice, "cpu")
    assert hardware["cpu_only"] is True and hardware["allowed_gpu_counts"] == [0]
    assert hardware["availability"][0]["gpus_free"] == 3
    assert hardware["availability"][0]["max_gpus_per_replica_now"] == 0


def test_query_count_does_not_grow_with_the_fleet(as_alice, h100, east, west, django_assert_max_num_queries):
    for n in range(12):
        node = NodeFactory(hardware_type=h100, location=east if n % 2 else west, gpus=8, simulated=n % 3 == 0)
        if n % 4 == 0:
            _replica_on(node, gpus=list(node.gpus.all()[:4]))
    for n in range(3):
        HardwareTypeFactory(slug=f"extra-{n}")
    with django_assert_max_num_queries(5):
        response = as_alice.get("/api/v1/hardware")
    assert len(response.json()["hardware"]) == 4


def test_every_tenant_sees_the_same_catalog(as_alice, as_mallory, h100, east):
    NodeFactory(hardware_type=h100, location=east, gpus=8)
    assert as_alice.get("/api/v1/hardware").json() == as_mallory.get("/api/v1/hardware").json()


def test_it_needs_a_token(anonymous, db):
    response = anonymous.get("/api/v1/hardware")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_needs_the_templates_read_scope(alice):
    assert client_for(alice, scopes="deployments:read deployments:write").get("/api/v1/hardware").status_code == 403


def test_it_is_read_only(as_alice, db):
    assert as_alice.post("/api/v1/hardware", {}, format="json").status_code == 405
