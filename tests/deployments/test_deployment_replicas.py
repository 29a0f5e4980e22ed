import pytest

from nodes.models import Gpu
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, place_running

pytestmark = pytest.mark.django_db


def test_pending_replicas_say_why(as_alice, acme):
    deployment = deployment_for(acme, replica_count=2)
    response = as_alice.get(f"{URL}/{deployment.pk}/replicas")
    assert response.status_code == 200
    replicas = response.json()["replicas"]
    assert [r["ordinal"] for r in replicas] == [0, 1]
    assert all(r["state"] == "pending" and r["reason"] and r["node"] is None and r["endpoint"] is None for r in replicas)
    assert replicas[0]["gpus"] == {"count": 0, "ids": []}


def test_running_replicas_show_node_gpus_and_endpoint_but_no_internal_address(as_alice, acme):
    deployment = deployment_for(acme, gpus_per_container=2)
    (replica,) = place_running(deployment)
    for index in range(2):
        Gpu.objects.create(node=replica.node, index=index, uuid=f"GPU-{index}-abc", pci_bdf=f"0000:1{index}:00.0",
                           model="H100", memory_mib=81559, replica=replica)
    shown = as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"][0]
    assert shown["node"]["hostname"] == replica.node.hostname and shown["node"]["simulated"] is False
    assert shown["gpus"] == {"count": 2, "ids": ["GPU-0-abc", "GPU-1-abc"]}
    assert shown["endpoint"] == f"http://{replica.node.public_address}:{replica.host_port}"
    body = str(shown)
    assert "10.88.0.2" not in body and "0000:10:00.0" not in body  # no VM address, no PCI addresses


def test_the_query_count_does_not_grow_with_replicas(as_alice, acme, django_assert_max_num_queries):
    acme.max_gpus = 100
    acme.save()
    few = deployment_for(acme, replica_count=1)
    many = deployment_for(acme, replica_count=20)
    place_running(many)
    as_alice.get(f"{URL}/{few.pk}/replicas")
    with django_assert_max_num_queries(8):
        assert len(as_alice.get(f"{URL}/{many.pk}/replicas").json()["replicas"]) == 20
