"""VFIO against fake sysfs trees: which functions a VM gets, binding and giving them back
(byte for byte), refusals with their reasons, and recovery after a crash mid-bind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nodes.agent.vfio import Vfio, VfioError, group_viability, passthrough_devices
from tests.agent.sysfs_trees import hold_open, iommu_off, share_group_with_nic, snapshot, tree

H100 = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
        "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]
SWITCHES = ["0000:05:00.0", "0000:06:00.0", "0000:85:00.0", "0000:86:00.0"]


def drivers(sysfs, bdfs):
    return {b: sysfs.link_name(sysfs.pci(b, "driver")) for b in bdfs}


def test_one_gpu_on_an_hgx_board_goes_alone(tmp_path):
    sysfs = tree(tmp_path)
    assert [d.bdf for d in passthrough_devices(sysfs, [H100[3]])] == [H100[3]]


def test_the_whole_hgx_board_takes_every_nvswitch(tmp_path):
    sysfs = tree(tmp_path, "8xH200")
    devices = passthrough_devices(sysfs, H100)
    assert [d.bdf for d in devices] == H100 + SWITCHES
    assert {d.kind for d in devices[8:]} == {"nvswitch"} and all(d.class16 == 0x0680 for d in devices[8:])


@pytest.mark.parametrize("count", [2, 4])
def test_a_partial_hgx_board_is_refused_with_the_reason(tmp_path, count):
    with pytest.raises(VfioError, match="one GPU or all of them.*shared-NVSwitch"):
        passthrough_devices(tree(tmp_path), H100[:count])


def test_a_pcie_gpu_takes_its_audio_function(tmp_path):
    sysfs = tree(tmp_path, "4xL40S")
    devices = passthrough_devices(sysfs, ["0000:65:00.0", "0000:ca:00.0"])
    assert [(d.bdf, d.kind) for d in devices] == [
        ("0000:65:00.0", "gpu"), ("0000:65:00.1", "audio"), ("0000:ca:00.0", "gpu"), ("0000:ca:00.1", "audio")]


def test_a_group_shared_with_a_host_nic_is_not_viable(tmp_path):
    sysfs = tree(tmp_path)
    share_group_with_nic(sysfs, H100[0])
    viable, why = group_viability(sysfs, sysfs.pci_device(H100[0]).iommu_group)
    assert not viable and "0000:19:00.0 (class 0x0200" in why and "ACS" in why
    with pytest.raises(VfioError, match=f"GPU {H100[0]} cannot be passed through"):
        passthrough_devices(sysfs, [H100[0]])
    assert [d.bdf for d in passthrough_devices(sysfs, [H100[1]])] == [H100[1]]  # the others still go


def test_without_an_iommu_nothing_is_viable(tmp_path):
    sysfs = tree(tmp_path)
    iommu_off(sysfs)
    with pytest.raises(VfioError, match="no IOMMU group: turn the IOMMU on"):
        passthrough_devices(sysfs, [H100[0]])


def test_a_device_that_is_not_a_gpu_is_refused(tmp_path):
    with pytest.raises(VfioError, match="no GPU at 0000:05:00.0.*not an NVIDIA GPU"):
        passthrough_devices(tree(tmp_path), ["0000:05:00.0"])
    with pytest.raises(VfioError, match="no GPU at 0000:77:00.0: no such PCI device"):
        passthrough_devices(tree(tmp_path), ["0000:77:00.0"])


def test_bind_then_release_leaves_the_tree_byte_for_byte_as_it_was(tmp_path):
    sysfs = tree(tmp_path)
    before = snapshot(sysfs.root)
    vfio = Vfio(sysfs, tmp_path / "vfio")
    attachment = vfio.bind("vm-a", H100)
    assert set(drivers(sysfs, H100 + SWITCHES).values()) == {"vfio-pci"}
    for group in {d.group for d in attachment.devices}:
        assert sysfs.vfio_group_node(group).exists()
    assert not sysfs.proc("driver", "nvidia", "gpus", H100[0]).exists()  # the host driver let go of it
    assert vfio.claimed()[H100[0]] == "vm-a"
    released = vfio.release("vm-a")
    assert [r.ok for r in released.resets] == [True] * 12 and released.restore_errors == []
    assert snapshot(sysfs.root) == before
    assert vfio.owners() == []


def test_release_gives_each_function_back_to_the_driver_it_had(tmp_path):
    sysfs = tree(tmp_path, "4xL40S")
    before = drivers(sysfs, ["0000:17:00.0", "0000:17:00.1"])
    vfio = Vfio(sysfs, tmp_path / "vfio")
    vfio.bind("vm-a", ["0000:17:00.0"])
    assert set(drivers(sysfs, ["0000:17:00.0", "0000:17:00.1"]).values()) == {"vfio-pci"}
    vfio.release("vm-a")
    assert drivers(sysfs, ["0000:17:00.0", "0000:17:00.1"]) == before == {
        "0000:17:00.0": "nvidia", "0000:17:00.1": "snd_hda_intel"}


def test_a_gpu_held_open_by_a_process_is_refused_with_who_holds_it(tmp_path):
    sysfs = tree(tmp_path)
    hold_open(sysfs, "/dev/nvidia2", comm="python3")
    before = snapshot(sysfs.root)
    with pytest.raises(VfioError, match=r"0000:3a:00.0 is in use: python3 \(pid 4242\) holds /dev/nvidia2 open"):
        Vfio(sysfs, tmp_path / "vfio").bind("vm-a", [H100[2]])
    assert snapshot(sysfs.root) == before  # nothing was touched
    Vfio(sysfs, tmp_path / "vfio").release("vm-a")
    assert Vfio(sysfs, tmp_path / "vfio").bind("vm-b", [H100[3]]).gpus == [H100[3]]  # another GPU is fine


@pytest.mark.parametrize("comm, what", [("nvidia-persiste", "nvidia-persistenced"), ("nv-fabricmanage", "Fabric Manager")])
def test_nvidia_daemons_holding_the_devices_are_named(tmp_path, comm, what):
    sysfs = tree(tmp_path)
    hold_open(sysfs, "/dev/nvidiactl", pid=900, comm=comm)
    with pytest.raises(VfioError, match=f"{what}.*pid 900"):
        Vfio(sysfs, tmp_path / "vfio").bind("vm-a", H100)


def test_a_gpu_passed_to_one_vm_is_refused_to_another(tmp_path):
    sysfs = tree(tmp_path)
    vfio = Vfio(sysfs, tmp_path / "vfio")
    vfio.bind("vm-a", [H100[0]])
    with pytest.raises(VfioError, match="held for vm-a"):
        vfio.bind("vm-b", [H100[0]])
    assert vfio.bind("vm-a", [H100[0]]).gpus == [H100[0]]  # the same owner again: idempotent


def test_a_failed_reset_is_reported_and_the_device_still_goes_back(tmp_path):
    sysfs = tree(tmp_path)
    vfio = Vfio(sysfs, tmp_path / "vfio")
    vfio.bind("vm-a", [H100[5]])
    (sysfs.root / ".sim" / "fail-reset").mkdir()
    (sysfs.root / ".sim" / "fail-reset" / H100[5]).touch()
    released = vfio.release("vm-a")
    (reset,) = released.resets
    assert not reset.ok and "reset (flr/bus) failed: Input/output error" in reset.reason
    assert drivers(sysfs, [H100[5]]) == {H100[5]: "nvidia"}


def test_recover_gives_back_what_a_dead_vm_held_and_keeps_a_live_one(tmp_path):
    sysfs = tree(tmp_path)
    vfio = Vfio(sysfs, tmp_path / "vfio")
    vfio.bind("dead", [H100[0]])
    vfio.bind("alive", [H100[1]])
    released = vfio.recover(alive={"alive"})
    assert [r.owner for r in released] == ["dead"]
    assert drivers(sysfs, H100[:2]) == {H100[0]: "nvidia", H100[1]: "vfio-pci"}
    assert vfio.owners() == ["alive"]


def test_an_agent_killed_mid_bind_is_recovered_byte_for_byte(tmp_path):
    """SIGKILL while the whole board is being bound (after the record, between two devices'
    writes), then the next agent's recover() gives every device back."""
    sysfs = tree(tmp_path)
    before = snapshot(sysfs.root)
    state = tmp_path / "vfio"
    script = textwrap.dedent(f"""
        import os, signal
        from nodes.agent.simulate import SimulatedSysfs
        from nodes.agent.vfio import Vfio
        class Dying(SimulatedSysfs):
            writes = 0
            def write(self, path, text):
                super().write(path, text)
                Dying.writes += 1
                if Dying.writes == 17:  # half-way through the sixth GPU
                    os.kill(os.getpid(), signal.SIGKILL)
        Vfio(Dying({str(sysfs.root)!r}), {str(state)!r}).bind("vm-a", {H100!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    record = json.loads((state / "vm-a.json").read_text())
    assert record["state"] == "binding" and len(record["devices"]) == 12
    bound = drivers(sysfs, H100)
    assert "vfio-pci" in bound.values() and "nvidia" in bound.values()  # really half-way
    (released,) = Vfio(sysfs, state).recover(alive=set())
    assert released.restore_errors == []
    assert snapshot(sysfs.root) == before


def test_the_view_lists_groups_devices_drivers_and_viability(tmp_path):
    sysfs = tree(tmp_path, "4xL40S")
    share_group_with_nic(sysfs, "0000:e3:00.0", "0000:e3:00.2")
    vfio = Vfio(sysfs, tmp_path / "vfio")
    vfio.bind("vm-a", ["0000:17:00.0"])
    view = vfio.view()
    assert view["iommu"] is True and len(view["groups"]) == 4
    first = view["groups"][0]
    assert [(d["bdf"], d["kind"], d["driver"], d["held_by"]) for d in first["devices"]] == [
        ("0000:17:00.0", "gpu", "vfio-pci", "vm-a"), ("0000:17:00.1", "audio", "vfio-pci", "vm-a")]
    last = view["groups"][-1]
    assert last["viable"] is False and "0000:e3:00.2" in last["reason"]
