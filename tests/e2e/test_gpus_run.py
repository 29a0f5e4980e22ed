"""GPU replicas end to end on a simulated 8xH100 node (`--simulate-gpus 8xH100`): the agent's
inventory becomes eight Gpu rows, an 8-GPU replica runs with the whole board bound (on the
simulated tree) and shows its GPUs, and a second 8-GPU deployment waits with a capacity reason
until the first one stops and the board comes back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.test_deployments_run import Api, answer, direct_endpoint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]
H100 = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
        "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:05:00.0", "0000:06:00.0", "0000:85:00.0", "0000:86:00.0"]


def drivers(node) -> set[str | None]:
    """Each device's driver; None for a device between unbind and probe (the agent rebinds while
    the test polls, and the link is briefly absent then)."""
    devices = Path(node.data_dir) / "simulated-sysfs" / "sys" / "bus" / "pci" / "devices"

    def driver(bdf: str) -> str | None:
        try:
            return os.path.basename(os.readlink(devices / bdf / "driver"))
        except FileNotFoundError:
            return None

    return {driver(bdf) for bdf in H100 + SWITCHES}


@pytest.fixture
def hello_8gpu(customer):
    """The hello image as a template of acme's own that allows 8 GPUs (the global one is CPU-only)."""
    from accounts.models import Tenant
    from templates.models import Template

    hello = Template.objects.get(slug="hello", tenant__isnull=True)
    Template.objects.create(tenant=Tenant.objects.get(slug="acme"), slug="hello-gpu", name="Hello on GPUs",
                            image=hello.image, default_env=hello.default_env, traffic_port=8080, min_gpus=1,
                            max_gpus=8, health_check_path="/")
    Tenant.objects.filter(slug="acme").update(max_gpus=64)
    return "hello-gpu"


def test_an_8_gpu_replica_runs_on_a_simulated_board_and_a_second_waits_for_it(plane, make_node, customer, hello_8gpu):
    from nodes.models import Gpu, HardwareType, Node

    node = make_node("hgx-sim-1", hardware="h100-80gb-sxm-8x", agent_args=("--simulate-gpus", "8xH100"))
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=180, what="node online")
    row = Node.objects.get(pk=node.node_id)
    assert row.simulated and row.gpu_passthrough, row.gpu_passthrough_reason
    assert list(Gpu.objects.filter(node_id=node.node_id).order_by("index").values_list("pci_bdf", flat=True)) == H100
    hgx = HardwareType.objects.get(slug="h100-80gb-sxm-8x")
    api = Api(plane, customer)
    first = api.deploy(name="board-1", template_id=hello_8gpu, hardware_id=hgx.pk, gpus_per_container=8)
    api.wait_status(first, "running", timeout=360)
    assert "Hello" in wait_for(lambda: "Hello" in (a := answer(direct_endpoint(api, first))) and a, timeout=30,
                                 what="endpoint")
    (replica,) = api.replicas(first)
    assert replica["simulated"] is True and replica["node"]["simulated"] is True
    assert replica["reason"].startswith("simulated 8xH100: 8 GPU(s) bound on the simulated board")
    gpus = replica["gpus"]
    assert [g["bdf"] for g in gpus] == H100 and [g["index"] for g in gpus] == list(range(8))
    assert [g["numa_node"] for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1] and {g["nvlink"] for g in gpus} == {True}
    inventory = json.loads(node.cli("inventory", "--simulate-gpus", "8xH100").stdout)
    assert [g["uuid"] for g in gpus] == [g["uuid"] for g in inventory["gpus"]]
    assert {g["held_by"] for g in inventory["gpus"]} == {replica["id"]}
    assert drivers(node) == {"vfio-pci"}  # the whole board, NVSwitches too, bound for the VM

    second = api.deploy(name="board-2", template_id=hello_8gpu, hardware_id=hgx.pk, gpus_per_container=8)
    (waiting,) = wait_for(lambda: [r for r in api.replicas(second) if "no capacity" in r["reason"]] or None,
                          timeout=60, what="a capacity reason")
    assert waiting["state"] == "pending"
    assert "8 free NVIDIA H100 80GB HBM3 GPU(s) (h100-80gb-sxm-8x)" in waiting["reason"]

    assert api.http.post(f"/deployments/{first}/stop").status_code == 200
    api.wait_status(first, "stopped", timeout=120)
    api.wait_status(second, "running", timeout=360)  # the board came back: reset and given back, then bound again
    (moved,) = api.replicas(second)
    assert [g["bdf"] for g in moved["gpus"]] == H100 and moved["node"]["hostname"] == "hgx-sim-1"
    assert api.http.post(f"/deployments/{second}/stop").status_code == 200
    api.wait_status(second, "stopped", timeout=120)
    wait_for(lambda: drivers(node) == {"nvidia", "nvidia-nvswitch"}, timeout=30, what="the board back on its drivers")
