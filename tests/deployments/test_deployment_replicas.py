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
    assert replicas[0]["gpus"] == [] and replicas[0]["simulated"] is False


def test_running_replicas_show_node_gpus_and_endpoint_but_no_internal_address(as_alice, acme):
    deployment = deployment_for(acme, gpus_per_container=2)
    (replica,) = place_running(deployment)
    for index in range(2):
        Gpu.objects.create(node=replica.node, index=index, uuid=f"GPU-{index}-abc", pci_bdf=f"0000:1{index}:00.0",
                           model="H100", memory_mib=81559, numa_node=1, nvlink_domain="nvswitch:0000:05:00.0",
                           replica=replica)
    shown = as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"][0]
    assert shown["node"]["hostname"] == replica.node.hostname and shown["node"]["simulated"] is False
    assert shown["gpus"] == [
        {"index": 0, "uuid": "GPU-0-abc", "model": "H100", "bdf": "0000:10:00.0", "numa_node": 1, "nvlink": True},
        {"index": 1, "uuid": "GPU-1-abc", "model": "H100", "bdf": "0000:11:00.0", "numa_node": 1, "nvlink": True},
    ]
    assert shown["endpoint"] == f"http://{replica.node.public_address}:{replica.host_port}"
    assert "10.88.0.2" not in str(shown)  # never the VM's internal address


def test_one_gpu_or_pcie_cards_do_not_claim_nvlink(as_alice, acme):
    deployment = deployment_for(acme, gpus_per_container=2, replica_count=2)
    first, second = place_running(deployment)
    Gpu.objects.create(node=first.node, index=0, uuid="GPU-a", pci_bdf="0000:18:00.0", model="H100", memory_mib=1,
                       nvlink_domain="nvswitch:0000:05:00.0", replica=first)
    for index in range(2):
        Gpu.objects.create(node=second.node, index=index + 4, uuid=f"GPU-p{index}", pci_bdf=f"0000:6{index}:00.0",
                           model="L40S", memory_mib=1, replica=second)
    shown = {r["ordinal"]: r["gpus"] for r in as_alice.get(f"{URL}/{deployment.pk}/replicas").json()["replicas"]}
    assert [g["nvlink"] for g in shown[0]] == [False] and [g["nvlink"] for g in shown[1]] == [False, False]


def test_the_query_count_does_not_grow_with_replicas(as_alice, acme, django_assert_max_num_queries):
    acme.max_gpus = 100
    acme.save()
    few = deployment_for(acme, replica_count=1)
    many = deployment_for(acme, replica_count=20)
    place_running(many)
    as_alice.get(f"{URL}/{few.pk}/replicas")
    with django_assert_max_num_queries(8):
        assert len(as_alice.get(f"{URL}/{many.pk}/replicas").json()["replicas"]) == 20
