"""The node page shows the agent's preflight (what failed, what to change) and each GPU's
health with its reason; the GPU list filters by health."""

from __future__ import annotations

import pytest

from tests.agent.sysfs_trees import iommu_off, share_group_with_nic
from tests.factories import HardwareTypeFactory
from tests.nodes.test_admin import operator_client  # noqa: F401  (fixture)
from tests.nodes.test_gpus import H100, inventory, joined

pytestmark = pytest.mark.django_db


@pytest.fixture
def hgx():
    return HardwareTypeFactory(slug="h100-80gb-sxm-8x", gpus_per_node=8, allowed_gpu_counts=[1, 8], interconnect="nvswitch")


def test_a_failed_preflight_shows_what_to_change(operator_client, hgx, tmp_path):  # noqa: F811
    node = joined(hgx, inventory(tmp_path, fault=iommu_off))
    page = operator_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert "<b>FAIL</b> iommu: no IOMMU groups" in page and "intel_iommu=on" in page
    assert "<b>ok</b> vfio-pci" in page


def test_an_out_of_service_gpu_shows_its_reason(operator_client, hgx, tmp_path):  # noqa: F811
    node = joined(hgx, inventory(tmp_path, fault=lambda s: share_group_with_nic(s, H100[3])))
    page = operator_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert "out of service" in page and "0000:19:00.0" in page
    listing = operator_client.get("/admin/nodes/gpu/?health__exact=out").content.decode()
    assert H100[3] in listing and H100[2] not in listing
