"""GPU counts per replica on the catalog's hardware: an NVSwitch board (HGX) offers 1 or 8, and
a request for 2 or 4 is a 400 that says why; a PCIe box keeps its powers of two."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from nodes.models import HardwareType
from tests.deployments.conftest import URL

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(db):
    call_command("load_catalog", verbosity=0)


def create(client, slug: str, gpus: int):
    hardware = HardwareType.objects.get(slug=slug)
    return client.post(URL, {"image_url": "ghcr.io/acme/app:1.0", "hardware_id": hardware.pk,
                             "gpus_per_container": gpus}, format="json")


@pytest.mark.parametrize("slug", ["h100-80gb-sxm-8x", "h200-141gb-sxm-8x", "a100-80gb-sxm-8x"])
@pytest.mark.parametrize("gpus", [2, 4])
def test_two_or_four_gpus_on_an_nvswitch_board_is_a_400_that_says_why(as_alice, catalog, slug, gpus):
    response = create(as_alice, slug, gpus)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "gpus_per_container" and error["code"] == "not_offered"
    assert f"offers 1, 8 GPUs per container, not {gpus}." in error["message"]
    assert "joined by NVSwitches" in error["message"] and "shared-NVSwitch mode" in error["message"]


@pytest.mark.parametrize("gpus", [1, 8])
def test_one_gpu_or_the_whole_board_is_offered(as_alice, catalog, gpus):
    response = create(as_alice, "h200-141gb-sxm-8x", gpus)
    assert response.status_code == 201, response.json()
    assert response.json()["deployment"]["gpus_per_container"] == gpus


def test_a_pcie_box_keeps_its_counts(as_alice, catalog):
    assert HardwareType.objects.get(slug="l40s-48gb-4x").allowed_gpu_counts == [1, 2, 4]
    assert create(as_alice, "l40s-48gb-4x", 2).status_code == 201
    response = create(as_alice, "l40s-48gb-4x", 3)
    assert response.status_code == 400 and "NVSwitch" not in response.json()["errors"][0]["message"]


def test_the_h200_board_is_in_the_catalog(as_alice, catalog):
    hardware = {h["slug"]: h for h in as_alice.get("/api/v1/hardware").json()["hardware"]}
    h200 = hardware["h200-141gb-sxm-8x"]
    assert (h200["name"], h200["gpu_model"], h200["gpu_memory_gib"], h200["allowed_gpu_counts"]) == (
        "8x H200 141GB SXM", "NVIDIA H200", 141, [1, 8])
