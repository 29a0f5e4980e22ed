"""`GET /api/v1/nodes/{id}/vfio` and `POST .../vfio/validate`: a node's IOMMU groups and whether
GPUs can go into one VM together, from what its agent reported (operators only)."""

from __future__ import annotations

import pytest

from nodes.models import Gpu
from tests.agent.sysfs_trees import iommu_off, share_group_with_nic
from tests.factories import HardwareTypeFactory, UserFactory
from tests.nodes.test_gpus import H100, inventory, joined
from tests.nodes.test_operator_api import client_with

pytestmark = pytest.mark.django_db
SWITCHES = ["0000:05:00.0", "0000:06:00.0", "0000:85:00.0", "0000:86:00.0"]


@pytest.fixture
def operator():
    return client_with(UserFactory(username="ops@example.com", is_staff=True))


@pytest.fixture
def hgx():
    return HardwareTypeFactory(slug="h100-80gb-sxm-8x", gpus_per_node=8, allowed_gpu_counts=[1, 8], interconnect="nvswitch")


def test_the_view_lists_groups_devices_drivers_and_viability(operator, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path, fault=lambda s: share_group_with_nic(s, H100[7])))
    body = operator.get(f"/api/v1/nodes/{node.pk}/vfio").json()
    assert body["node"] == {"id": node.pk, "hostname": "hgx-1", "simulated": True}
    assert body["iommu"] is True and body["passthrough"] is True and body["reported_at"]
    assert len(body["groups"]) == 12  # 8 GPUs, 4 NVSwitches
    first = body["groups"][0]
    assert first["viable"] and [(d["bdf"], d["kind"], d["driver"]) for d in first["devices"]] == [
        (H100[0], "gpu", "nvidia")]
    bad = next(g for g in body["groups"] if any(d["bdf"] == H100[7] for d in g["devices"]))
    assert not bad["viable"] and "0000:19:00.0" in bad["reason"]
    assert {c["name"] for c in body["preflight"]["checks"]} >= {"iommu", "vfio-pci", "/dev/vfio/vfio", "memlock", "kvm"}


def test_validate_one_gpu_and_the_whole_board(operator, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path))
    one = operator.post(f"/api/v1/nodes/{node.pk}/vfio/validate", {"bdfs": [H100[2]]}, format="json").json()
    assert one["valid"] and one["devices"] == [{"bdf": H100[2], "kind": "gpu", "group": 6}] and one["problems"] == []
    board = operator.post(f"/api/v1/nodes/{node.pk}/vfio/validate", {"bdfs": H100}, format="json").json()
    assert board["valid"] and [d["bdf"] for d in board["devices"]] == H100 + SWITCHES


def test_validate_names_every_problem(operator, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path, fault=lambda s: share_group_with_nic(s, H100[1])))
    Gpu.objects.filter(node=node, pci_bdf=H100[0]).update(replica=None)
    body = operator.post(f"/api/v1/nodes/{node.pk}/vfio/validate",
                         {"bdfs": [H100[0], H100[1], "0000:77:00.0"]}, format="json").json()
    assert body["valid"] is False
    text = " | ".join(body["problems"])
    assert f"{H100[1]}: cannot be passed through" in text and "0000:77:00.0: no GPU at this address" in text
    assert "3 of the board's 8 GPUs" in text


def test_validate_on_a_node_without_an_iommu_says_so(operator, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path, fault=iommu_off))
    body = operator.post(f"/api/v1/nodes/{node.pk}/vfio/validate", {"bdfs": [H100[0]]}, format="json").json()
    assert not body["valid"] and body["problems"][0].startswith("the node cannot pass GPUs through: iommu:")


def test_bad_input_is_a_400_and_a_missing_node_a_404(operator, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path))
    assert operator.post(f"/api/v1/nodes/{node.pk}/vfio/validate", {"bdfs": []}, format="json").status_code == 400
    assert operator.get("/api/v1/nodes/999999/vfio").status_code == 404
    assert operator.post("/api/v1/nodes/999999/vfio/validate", {"bdfs": [H100[0]]}, format="json").status_code == 404


def test_customers_are_refused(acme, hgx, tmp_path):
    node = joined(hgx, inventory(tmp_path))
    customer = client_with(UserFactory(username="eve@example.com"))
    assert customer.get(f"/api/v1/nodes/{node.pk}/vfio").status_code == 403
