"""The GPU inventory and preflight, run for real against fake sysfs trees (and a fake NVML):
HGX 8xH100 and 8xH200, a PCIe L40S box, a group shared with a host NIC, the IOMMU off, a GPU
held open, GPUs bound to vfio-pci, XIDs in the kernel log, a failed reset.

No VM boots and no network device is made: "binding" writes only the fake sysfs tree.
"""

from __future__ import annotations

import resource
from dataclasses import replace

import pytest

from nodes.agent.gpu.host import GpuHost
from nodes.agent.gpu.nvml import NvmlGpu, NvmlSnapshot, NvmlUnavailable
from nodes.agent.inventory import collect
from nodes.agent.vfio import Vfio
from tests.agent.sysfs_trees import hold_open, iommu_off, share_group_with_nic, tree
from tests.agent.test_vfio import H100, SWITCHES

UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def KIT():
    return {"driver_version": "550.163.01", "kernel_version": "6.1.0-57-cloud-amd64",
            "supported": {"0x2330": True, "0x2335": True, "0x26b9": True}}


class FakeNvml:
    """Copies PyNvml: a snapshot of the GPUs the driver holds (only those), or NvmlUnavailable
    when there is no driver; open() says per GPU whether the driver could initialise it."""

    def __init__(self, gpus: list[NvmlGpu] | None = None, *, driver: str = "550.90.07", fail_open: dict | None = None):
        self.gpus = gpus
        self.driver = driver
        self.fail_open = fail_open or {}
        self.opened: list[str] = []

    def snapshot(self) -> NvmlSnapshot:
        if self.gpus is None:
            raise NvmlUnavailable("NVML: Driver Not Loaded")
        return NvmlSnapshot(self.driver, "12.4", self.gpus)

    def open(self, bdfs):
        self.opened += bdfs
        return {b: self.fail_open.get(b) for b in bdfs}


def nvml_for(bdfs, name="NVIDIA H100 80GB HBM3", memory=81559, switches=SWITCHES, **extra):
    return [NvmlGpu(index=i, uuid=f"GPU-nvml-{i}", name=name, memory_mib=memory, bdf=b, numa_node=None,
                    nvlink_remote=[s for s in switches for _ in range(4)][:18], ecc_enabled=True, ecc_uncorrected=0,
                    **extra) for i, b in enumerate(bdfs)]


def inventory(host: GpuHost, accel: str = "kvm") -> dict:
    return host.inventory(accel=accel, accel_reason="probe VM booted", memlock=UNLIMITED)


def test_hgx_h100_from_nvml_when_the_driver_holds_the_gpus(tmp_path):
    sysfs = tree(tmp_path)
    host = GpuHost(sysfs, tmp_path / "data", nvml=FakeNvml(nvml_for(H100)), hostname="gpu-1",
                   kit=lambda: {"driver_version": "535.261.03", "kernel_version": "6.1", "supported": {"0x2330": True}})
    inv = inventory(host)
    assert [g["pci_bdf"] for g in inv["gpus"]] == H100 and [g["index"] for g in inv["gpus"]] == list(range(8))
    first = inv["gpus"][0]
    assert (first["uuid"], first["uuid_source"], first["name"], first["memory_mib"], first["memory_source"]) == (
        "GPU-nvml-0", "nvml", "NVIDIA H100 80GB HBM3", 81559, "nvml")
    assert [g["numa_node"] for g in inv["gpus"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert first["nvlink"] == {"domain": "nvswitch:0000:05:00.0", "peers": SWITCHES}
    assert first["bar1_mib"] == 128 * 1024 and first["iommu_group"] == 2 and first["driver"] == "nvidia"
    assert all(g["usable"] and g["healthy"] and g["kit_supported"] for g in inv["gpus"])
    assert [s["pci_bdf"] for s in inv["nvswitches"]] == SWITCHES
    assert all(s["passthrough"]["viable"] and s["driver"] == "nvidia-nvswitch" for s in inv["nvswitches"])
    assert inv["nvidia"]["host_driver"] == "550.90.07" and inv["nvidia"]["nvml"] == "ok"
    assert inv["host"]["sockets"] == 2 and [n["cpus"] for n in inv["host"]["numa_nodes"]] == [112, 112]
    assert inv["preflight"]["passthrough"] is True and inv["preflight"]["reason"] == ""


def test_hgx_h200_from_sysfs_alone_once_bound_to_vfio_keeps_the_uuids_it_learnt(tmp_path):
    sysfs = tree(tmp_path, "8xH200")
    host = GpuHost(sysfs, tmp_path / "data", hostname="gpu-2")
    seen = {g["pci_bdf"]: g["uuid"] for g in inventory(host)["gpus"]}  # the driver's /proc text
    Vfio(sysfs, tmp_path / "elsewhere").bind("someone", H100)  # e.g. an operator's vfio-pci.ids=
    inv = inventory(host)
    assert {g["pci_bdf"]: g["uuid"] for g in inv["gpus"]} == seen
    assert {g["uuid_source"] for g in inv["gpus"]} == {"remembered"}
    first = inv["gpus"][0]
    assert (first["name"], first["memory_mib"], first["driver"], first["bar1_mib"]) == (
        "NVIDIA H200", 143771, "vfio-pci", 256 * 1024)
    assert first["device_id"] == "0x2335" and first["form"] == "sxm"


def test_a_gpu_never_seen_by_the_driver_gets_a_stable_derived_uuid(tmp_path):
    sysfs = tree(tmp_path, "4xL40S")
    Vfio(sysfs, tmp_path / "elsewhere").bind("boot", ["0000:17:00.0"])
    one = inventory(GpuHost(sysfs, tmp_path / "a", hostname="box-1"))["gpus"][0]
    again = inventory(GpuHost(sysfs, tmp_path / "b", hostname="box-1"))["gpus"][0]
    other = inventory(GpuHost(sysfs, tmp_path / "c", hostname="box-2"))["gpus"][0]
    assert one["uuid_source"] == "derived" and one["uuid"] == again["uuid"] != other["uuid"]
    assert one["name"] == "NVIDIA L40S" and one["memory_source"] == "model" and one["nvlink"]["domain"] == ""


def test_a_pcie_box_has_no_nvswitches_and_no_nvlink(tmp_path):
    inv = inventory(GpuHost(tree(tmp_path, "4xL40S"), tmp_path / "data"))
    assert len(inv["gpus"]) == 4 and inv["nvswitches"] == []
    assert {g["nvlink"]["domain"] for g in inv["gpus"]} == {""}
    (group,) = [g for g in inv["vfio"]["groups"] if g["devices"][0]["bdf"] == "0000:17:00.0"]
    assert [d["kind"] for d in group["devices"]] == ["gpu", "audio"] and group["viable"]


def test_a_group_shared_with_a_nic_makes_that_gpu_unusable_not_the_node(tmp_path):
    sysfs = tree(tmp_path)
    share_group_with_nic(sysfs, H100[4])
    inv = inventory(GpuHost(sysfs, tmp_path / "data", kit=KIT))
    bad = inv["gpus"][4]
    assert not bad["usable"] and "cannot be passed through" in bad["reason"] and "0000:19:00.0" in bad["reason"]
    assert all(g["usable"] for i, g in enumerate(inv["gpus"]) if i != 4)
    assert inv["preflight"]["passthrough"] is True
    (check,) = [c for c in inv["preflight"]["checks"] if c["name"] == f"gpu {H100[4]}"]
    assert not check["ok"] and "ACS" in check["fix"]


def test_iommu_off_means_no_passthrough_and_says_which_kernel_parameter(tmp_path):
    sysfs = tree(tmp_path)
    iommu_off(sysfs)
    report = inventory(GpuHost(sysfs, tmp_path / "data"))["preflight"]
    assert report["passthrough"] is False
    assert report["reason"].startswith("iommu: no IOMMU groups") and "intel_iommu=on" in report["reason"]
    assert "BIOS" in report["reason"]


def test_a_gpu_held_open_is_unusable_with_who_holds_it(tmp_path):
    sysfs = tree(tmp_path)
    hold_open(sysfs, "/dev/nvidia1", pid=777, comm="train.py")
    gpus = inventory(GpuHost(sysfs, tmp_path / "data"))["gpus"]
    assert not gpus[1]["usable"] and "train.py (pid 777) holds /dev/nvidia1 open" in gpus[1]["in_use"]
    assert gpus[0]["usable"]


def test_persistenced_makes_every_driver_held_gpu_unusable(tmp_path):
    sysfs = tree(tmp_path)
    hold_open(sysfs, "/dev/nvidiactl", pid=12, comm="nvidia-persiste")
    gpus = inventory(GpuHost(sysfs, tmp_path / "data"))["gpus"]
    assert all("nvidia-persistenced" in g["reason"] for g in gpus)


def test_hardware_xids_and_ecc_errors_make_a_gpu_unhealthy(tmp_path):
    sysfs = tree(tmp_path)
    (sysfs.root / "dev" / "kmsg").write_text(
        "4,1001,5000,-;NVRM: Xid (PCI:0000:2a:00): 79, pid=0, name=, GPU has fallen off the bus.\n"
        "4,1002,5001,-;NVRM: Xid (PCI:0000:3a:00): 13, pid=99, name=python, Graphics Exception\n")
    gpus_nvml = nvml_for(H100)
    gpus_nvml[5] = replace(gpus_nvml[5], ecc_uncorrected=3)
    host = GpuHost(sysfs, tmp_path / "data", nvml=FakeNvml(gpus_nvml))
    gpus = inventory(host)["gpus"]
    assert not gpus[1]["healthy"] and "XID 79 (the GPU has fallen off the bus)" in gpus[1]["health_reason"]
    assert gpus[2]["healthy"] and gpus[2]["xids"] == [13]  # a program's own fault
    assert not gpus[5]["healthy"] and "3 uncorrectable ECC errors" in gpus[5]["reason"]
    health = {h["pci_bdf"]: h for h in host.health()}
    assert not health[H100[1]]["usable"] and health[H100[2]]["usable"]
    assert not health[H100[5]]["usable"] and "ECC" in health[H100[5]]["reason"]  # from the last inventory


def test_without_nvml_the_driver_proc_text_names_the_gpus(tmp_path):
    host = GpuHost(tree(tmp_path), tmp_path / "data", nvml=FakeNvml(None))
    inv = inventory(host)
    assert {g["uuid_source"] for g in inv["gpus"]} == {"driver"}
    assert inv["nvidia"] == {"host_driver": "535.261.03", "cuda": "", "nvml": "NVML: Driver Not Loaded"}


def test_a_kit_that_does_not_list_the_model_makes_the_gpus_unusable(tmp_path):
    kit = {"driver_version": "535.261.03", "kernel_version": "6.1", "supported": {"0x2330": True}}
    inv = inventory(GpuHost(tree(tmp_path, "8xH200"), tmp_path / "data", kit=lambda: kit))
    assert {g["kit_supported"] for g in inv["gpus"]} == {False}
    assert "supported-GPU list" in inv["gpus"][0]["reason"]
    assert inv["preflight"]["passthrough"] is False and inv["preflight"]["reason"].startswith("no GPU can be passed")


def test_a_real_node_without_kvm_or_kit_offers_no_passthrough(tmp_path):
    report = inventory(GpuHost(tree(tmp_path), tmp_path / "data"), accel="tcg")["preflight"]
    assert report["passthrough"] is False and report["reason"].startswith("kvm: tcg")
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"kvm", "gpu kit"}


def test_a_simulated_node_says_what_a_kit_supports_without_being_bound_by_it(tmp_path):
    kit = {"driver_version": "535.261.03", "kernel_version": "6.1", "supported": {"0x2330": True}}
    inv = inventory(GpuHost(tree(tmp_path, "8xH200"), tmp_path / "data", simulated="8xH200", kit=lambda: kit))
    assert {g["kit_supported"] for g in inv["gpus"]} == {False} and all(g["usable"] for g in inv["gpus"])


def test_a_simulated_node_passes_without_kvm_or_kit(tmp_path):
    host = GpuHost(tree(tmp_path), tmp_path / "data", simulated="8xH100")
    report = inventory(host, accel="tcg")["preflight"]
    assert report["passthrough"] is True and report["simulated"] is True
    assert {c["name"]: c["required"] for c in report["checks"]}["kvm"] is False


def test_memlock_must_be_raisable(tmp_path):
    host = GpuHost(tree(tmp_path), tmp_path / "data", kit=KIT)
    report = host.inventory(accel="kvm", memlock=(64 << 10, 64 << 10), can_raise=False)["preflight"]
    assert report["passthrough"] is False and "lacks CAP_SYS_RESOURCE" in report["reason"]
    assert "LimitMEMLOCK=infinity" in report["reason"]
    report = host.inventory(accel="kvm", memlock=(64 << 10, 64 << 10), can_raise=True)["preflight"]
    assert report["passthrough"] is True


def test_collect_marks_a_simulated_node_and_keeps_the_real_cpus(tmp_path):
    host = GpuHost(tree(tmp_path), tmp_path / "data", simulated="8xH100")
    inv = collect(tmp_path, "tcg", gpus=host)
    assert inv.simulated is True and inv.simulated_board == "8xH100" and len(inv.gpus) == 8
    assert inv.host["threads"] == 224 and inv.cpus < 224  # the board's topology; this machine's CPUs


def test_a_vm_holding_gpus_shows_in_the_inventory_but_is_not_in_use(tmp_path):
    sysfs = tree(tmp_path)
    host = GpuHost(sysfs, tmp_path / "data", simulated="8xH100")
    host.attach("vm-1", [H100[0]])
    hold_open(sysfs, "/dev/vfio/2", pid=31, comm="qemu-system-x86")  # our own QEMU
    gpus = inventory(host)["gpus"]
    assert gpus[0]["held_by"] == "vm-1" and gpus[0]["in_use"] == "" and gpus[0]["usable"]


def test_a_failed_reset_takes_the_gpu_out_of_service_until_cleared(tmp_path):
    sysfs = tree(tmp_path)
    host = GpuHost(sysfs, tmp_path / "data", simulated="8xH100")
    host.attach("vm-1", [H100[6]])
    (sysfs.root / ".sim" / "fail-reset").mkdir()
    (sysfs.root / ".sim" / "fail-reset" / H100[6]).touch()
    (problem,) = host.detach("vm-1")
    assert problem.startswith(f"{H100[6]}: failed its reset after a VM")
    gpu = inventory(host)["gpus"][6]
    assert not gpu["healthy"] and not gpu["usable"] and "failed its reset" in gpu["reason"]
    with pytest.raises(Exception, match="out of service"):
        host.attach("vm-2", [H100[6]])
    assert host.clear_fault(H100[6]) and inventory(host)["gpus"][6]["usable"]


def test_between_tenants_a_real_gpu_is_reset_and_reinitialised_by_the_driver(tmp_path):
    sysfs = tree(tmp_path)
    nvml = FakeNvml(nvml_for(H100))
    host = GpuHost(sysfs, tmp_path / "data", nvml=nvml)
    host.attach("vm-1", H100)
    assert host.detach("vm-1") == []
    assert sysfs.resets == H100 + SWITCHES and nvml.opened == H100


def test_a_gpu_whose_memory_cannot_be_cleared_is_taken_out(tmp_path):
    sysfs = tree(tmp_path)
    host = GpuHost(sysfs, tmp_path / "data", nvml=FakeNvml(nvml_for(H100), fail_open={H100[2]: "ECC is off"}))
    host.attach("vm-1", [H100[2]])
    (problem,) = host.detach("vm-1")
    assert "memory could not be cleared after a tenant: ECC is off" in problem


def test_recover_after_a_crash_resets_and_gives_back(tmp_path):
    sysfs = tree(tmp_path)
    host = GpuHost(sysfs, tmp_path / "data", simulated="8xH100")
    host.attach("gone", [H100[0]])
    host.attach("alive", [H100[1]])
    assert host.recover(alive={"alive"}) == []
    assert sysfs.resets == [H100[0]] and host.vfio.owners() == ["alive"]
