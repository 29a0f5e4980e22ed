"""PCI device ids of the NVIDIA parts Gantry knows, named as NVML and nvidia-smi name them.

Used where NVML cannot answer: a GPU bound to vfio-pci (or a simulated one) has only its
sysfs ids, and the inventory still has to say what it is. Memory is what nvidia-smi reports
as the total on a stock board; NVML's figure wins whenever the NVIDIA driver holds the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GpuModel", "GPU_MODELS", "NVSWITCH_MODELS", "model_for"]


@dataclass(frozen=True)
class GpuModel:
    device_id: int
    name: str
    memory_mib: int
    form: str  # "sxm": on a baseboard, NVLinks through NVSwitches; "pcie": a card in a slot
    architecture: str


GPU_MODELS: dict[int, GpuModel] = {m.device_id: m for m in (
    GpuModel(0x2330, "NVIDIA H100 80GB HBM3", 81559, "sxm", "hopper"),
    GpuModel(0x2324, "NVIDIA H800", 81559, "sxm", "hopper"),
    GpuModel(0x2335, "NVIDIA H200", 143771, "sxm", "hopper"),
    GpuModel(0x2331, "NVIDIA H100 PCIe", 81559, "pcie", "hopper"),
    GpuModel(0x2321, "NVIDIA H100 NVL", 95830, "pcie", "hopper"),
    GpuModel(0x20B2, "NVIDIA A100-SXM4-80GB", 81920, "sxm", "ampere"),
    GpuModel(0x20B0, "NVIDIA A100-SXM4-40GB", 40960, "sxm", "ampere"),
    GpuModel(0x20B5, "NVIDIA A100 80GB PCIe", 81920, "pcie", "ampere"),
    GpuModel(0x26B9, "NVIDIA L40S", 46068, "pcie", "ada"),
    GpuModel(0x26B5, "NVIDIA L40", 46068, "pcie", "ada"),
    GpuModel(0x2684, "NVIDIA GeForce RTX 4090", 24564, "pcie", "ada"),
)}

NVSWITCH_MODELS: dict[int, str] = {
    0x22A3: "NVIDIA NVSwitch (third generation, HGX H100/H200)",
    0x1AF1: "NVIDIA NVSwitch (second generation, HGX A100)",
}


def model_for(device_id: int) -> GpuModel | None:
    return GPU_MODELS.get(device_id)
