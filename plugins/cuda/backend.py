"""CUDA backend and devices, queried through cupy's runtime API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Probe

INSTALL = "pip install 'llmrt[cuda]' (cupy-cuda12x; 'llmrt[cuda13]' for CUDA 13)"


def _version(v: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor."""
    return f"{v // 1000}.{v % 1000 // 10}"


class CUDADevice(Device):
    def __init__(self, backend: CUDABackend, index: int, props: dict[str, Any]) -> None:
        super().__init__(backend, index)
        self._props = props

    def info(self) -> DeviceInfo:
        import cupy

        free = total = None
        try:
            with cupy.cuda.Device(self.index):
                free, total = cupy.cuda.runtime.memGetInfo()
        except cupy.cuda.runtime.CUDARuntimeError:
            total = self._props["totalGlobalMem"]
        p = self._props
        versions = self.backend.versions  # type: ignore[attr-defined]
        summary = (
            f"CC {p['major']}.{p['minor']}, {p['multiProcessorCount']} SMs, "
            f"driver {versions.get('driver')}, runtime {versions.get('runtime')}"
        )
        return DeviceInfo(
            name=p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"]),
            type=DeviceType.IGPU if p.get("integrated") else DeviceType.GPU,
            memory_total=total,
            memory_free=free,
            properties={
                "compute_capability": f"{p['major']}.{p['minor']}",
                "multiprocessors": p["multiProcessorCount"],
                "clock_khz": p.get("clockRate"),
                "l2_cache_bytes": p.get("l2CacheSize"),
                "shared_memory_per_block_optin": p.get("sharedMemPerBlockOptin"),
                "pci_bus_id": f"{p.get('pciDomainID', 0):04x}:{p.get('pciBusID', 0):02x}:"
                f"{p.get('pciDeviceID', 0):02x}.0",
                **versions,
            },
            summary=summary,
        )


class CUDABackend(Backend):
    name = "cuda"
    priority = 100

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self._devices: list[CUDADevice] = []

    def probe(self) -> Probe:
        try:
            import cupy
        except ImportError:
            return Probe(False, "cupy is not installed", INSTALL)
        except Exception as exc:  # a broken cupy install raises all sorts at import
            return Probe(False, f"cupy failed to import: {exc}", f"reinstall cupy: {INSTALL}")
        runtime = cupy.cuda.runtime
        try:
            count = runtime.getDeviceCount()
            self.versions = {
                "cupy": cupy.__version__,
                "driver": _version(runtime.driverGetVersion()),
                "runtime": _version(runtime.runtimeGetVersion()),
            }
        except Exception as exc:  # CUDARuntimeError, or a missing libcuda
            return Probe(
                False,
                f"no usable NVIDIA driver or GPU ({exc})",
                "install the NVIDIA driver, or check that the GPU is visible (nvidia-smi)",
            )
        if count == 0:
            return Probe(False, "the NVIDIA driver reports no CUDA device", "check nvidia-smi")
        try:
            self._devices = [
                CUDADevice(self, i, runtime.getDeviceProperties(i)) for i in range(count)
            ]
        except Exception as exc:
            return Probe(False, f"querying CUDA devices failed: {exc}", "check nvidia-smi")
        return Probe(True, details=self.versions)

    def devices(self) -> Sequence[Device]:
        return self._devices
