"""NVML (nvidia-ml-py), for the GPUs the NVIDIA driver holds: the exact name, memory, UUID,
NVLinks, ECC and row-remapping state that sysfs cannot give.

NVML sees only GPUs bound to the nvidia driver; one bound to vfio-pci, or on a host without the
driver, is described from sysfs alone (discover.py). Every call here is blocking and may take
hundreds of milliseconds (NVML initialises each GPU it opens): call through asyncio.to_thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pynvml

from nodes.agent.sysfs import normalize_bdf

__all__ = ["Nvml", "NvmlGpu", "NvmlSnapshot", "NvmlUnavailable", "PyNvml"]


class NvmlUnavailable(Exception):
    """No NVML here (no driver, no library, or it would not initialise): the reason says which."""


@dataclass(frozen=True)
class NvmlGpu:
    index: int
    uuid: str
    name: str
    memory_mib: int
    bdf: str
    numa_node: int | None = None
    nvlink_remote: list[str] = field(default_factory=list)  # far end of each active link
    ecc_enabled: bool | None = None
    ecc_uncorrected: int | None = None  # volatile, since the driver loaded
    remap_pending: bool | None = None
    remap_failure: bool | None = None


@dataclass(frozen=True)
class NvmlSnapshot:
    driver_version: str
    cuda_version: str
    gpus: list[NvmlGpu]


class Nvml(Protocol):
    def snapshot(self) -> NvmlSnapshot: ...
    def open(self, bdfs: list[str]) -> dict[str, str | None]: ...


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _maybe(call, *args):
    """One NVML query a GPU may not support (NVLink on a PCIe card, row remapping before
    Ampere): None instead of an error."""
    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


class PyNvml:
    """The real NVML, through nvidia-ml-py."""

    def _init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML: {e}") from None

    def snapshot(self) -> NvmlSnapshot:
        self._init()
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            cuda = _maybe(pynvml.nvmlSystemGetCudaDriverVersion_v2) or 0
            gpus = [self._gpu(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
            return NvmlSnapshot(driver, f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "", gpus)
        finally:
            pynvml.nvmlShutdown()

    def _gpu(self, index: int, h) -> NvmlGpu:
        pci = pynvml.nvmlDeviceGetPciInfo(h)
        remote = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            if _maybe(pynvml.nvmlDeviceGetNvLinkState, h, link) == pynvml.NVML_FEATURE_ENABLED:
                info = _maybe(pynvml.nvmlDeviceGetNvLinkRemotePciInfo_v2, h, link)
                if info is not None:
                    remote.append(normalize_bdf(_text(info.busId)))
        ecc = _maybe(pynvml.nvmlDeviceGetEccMode, h)
        remap = _maybe(pynvml.nvmlDeviceGetRemappedRows, h)
        numa = _maybe(getattr(pynvml, "nvmlDeviceGetNumaNodeId", lambda _h: None), h)
        return NvmlGpu(
            index=index,
            uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
            name=_text(pynvml.nvmlDeviceGetName(h)),
            memory_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20),
            bdf=normalize_bdf(_text(pci.busId)),
            numa_node=numa,
            nvlink_remote=remote,
            ecc_enabled=None if ecc is None else bool(ecc[0]),
            ecc_uncorrected=_maybe(pynvml.nvmlDeviceGetTotalEccErrors, h,
                                   pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
            remap_pending=None if remap is None else bool(remap[2]),
            remap_failure=None if remap is None else bool(remap[3]),
        )

    def open(self, bdfs: list[str]) -> dict[str, str | None]:
        """Opens each GPU through the driver, which initialises it afresh after a reset (with
        ECC on, that rewrites all of its memory). bdf -> None, or why it could not be opened."""
        self._init()
        out: dict[str, str | None] = {}
        try:
            for bdf in bdfs:
                try:
                    h = pynvml.nvmlDeviceGetHandleByPciBusId(bdf.encode())
                    pynvml.nvmlDeviceGetMemoryInfo(h)
                    ecc = _maybe(pynvml.nvmlDeviceGetEccMode, h)
                    out[bdf] = None if ecc is None or ecc[0] else "ECC is off, so initialising it does not clear its memory"
                except pynvml.NVMLError as e:
                    out[bdf] = f"NVML could not open it: {e}"
        finally:
            pynvml.nvmlShutdown()
        return out
