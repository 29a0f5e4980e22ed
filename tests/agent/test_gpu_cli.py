"""`gantry-agent inventory`, `preflight` and `doctor`, as an operator runs them: one JSON object,
real code, on a simulated board or on this machine's own (GPU-less) sysfs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path, agent_kit_cache):
    def run(*args: str) -> tuple[int, dict]:
        out = subprocess.run([sys.executable, "-m", "nodes.agent", *args, "--data-dir", str(tmp_path / "data"),
                              "--kit-cache", str(agent_kit_cache)], capture_output=True, text=True, timeout=300,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "Traceback" not in out.stderr, out.stderr
        (line,) = out.stdout.strip().splitlines()
        return out.returncode, json.loads(line)

    return run


def test_inventory_of_a_simulated_hgx_board(cli):
    code, inventory = cli("inventory", "--simulate-gpus", "8xH100")
    assert code == 0 and inventory["simulated"] is True and inventory["simulated_board"] == "8xH100"
    assert len(inventory["gpus"]) == 8 and len(inventory["nvswitches"]) == 4
    gpu = inventory["gpus"][0]
    assert (gpu["name"], gpu["pci_bdf"], gpu["numa_node"], gpu["memory_mib"]) == (
        "NVIDIA H100 80GB HBM3", "0000:18:00.0", 0, 81559)
    assert gpu["uuid"].startswith("GPU-") and inventory["cpus"] >= 1 and inventory["host"]["sockets"] == 2
    again = cli("inventory", "--simulate-gpus", "8xH100")[1]
    assert [g["uuid"] for g in again["gpus"]] == [g["uuid"] for g in inventory["gpus"]]  # the tree persists


def test_preflight_of_a_simulated_pcie_box_passes(cli):
    code, report = cli("preflight", "--simulate-gpus", "4xL40S")
    assert code == 0 and report["passthrough"] is True and report["simulated"] is True


def test_preflight_here_says_why_not(cli):
    """This machine has no NVIDIA GPU (and no IOMMU): exit 1 and the reason."""
    code, report = cli("preflight")
    assert code == 1 and report["passthrough"] is False and report["reason"] == "no NVIDIA GPU on this node"
    assert {c["name"] for c in report["checks"]} >= {"iommu", "vfio-pci", "/dev/vfio/vfio", "memlock", "kvm"}


def test_doctor_shows_the_gpu_preflight(cli):
    _, report = cli("doctor", "--simulate-gpus", "8xH200")
    (check,) = [c for c in report["checks"] if c["name"] == "gpu passthrough"]
    assert check["ok"] and check["detail"].startswith("8 GPU(s), 4 NVSwitch(es) (simulated 8xH200)")
    assert report["preflight"]["passthrough"] is True


def test_a_simulated_node_needs_no_gpu_kit(cli):
    code, out = cli("gpu-kit", "build", "--simulate-gpus", "8xH100")
    assert code == 2 and "needs no GPU kit" in out["error"]
