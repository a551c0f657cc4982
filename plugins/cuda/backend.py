"""CUDA backend and devices, queried through cupy's runtime API.

Importing this module does not import cupy: the probe imports it, and the kernels
(llmrt_cuda.executable) load on the first upload or compile.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Executable, Probe
from llmrt.gguf.constants import GGMLType
from llmrt_cuda.lower import supports

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

        p = self._props
        versions = self.backend.versions  # type: ignore[attr-defined]
        free, total = None, p["totalGlobalMem"]
        with contextlib.suppress(cupy.cuda.runtime.CUDARuntimeError), cupy.cuda.Device(self.index):
            free, total = cupy.cuda.runtime.memGetInfo()
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
            summary=f"CC {p['major']}.{p['minor']}, {p['multiProcessorCount']} SMs, "
            f"driver {versions.get('driver')}, runtime {versions.get('runtime')}",
        )

    def supports_op(self, node: Any) -> bool:
        return supports(node)

    def upload(self, tensor: Any) -> Any:
        """The weight's GGUF blocks copied as they are (no f32 copy): a uint8 cupy array."""
        import cupy

        from llmrt_cuda.executable import alloc

        with cupy.cuda.Device(self.index):
            data = alloc(tensor.nbytes, f"weight {tensor.name}", self.id)
            data.set(np.ascontiguousarray(tensor.data).reshape(-1))
        return data

    def allocate(self, shape: tuple[int, ...], dtype: GGMLType) -> Any:
        import cupy

        from llmrt_cuda.executable import CudaTensor, alloc

        host = self.buffer_dtype(dtype)
        with cupy.cuda.Device(self.index):
            raw = alloc(math.prod(shape) * host.itemsize, f"tensor {list(shape)}", self.id)
            raw.fill(0)
        return CudaTensor(self, raw.view(host).reshape(shape), dtype)

    def compile(self, graph: Any, bindings: Mapping[str, Any]) -> Executable:
        from llmrt_cuda.executable import CUDAProgram

        return CUDAProgram(self, graph, bindings)


class CUDABackend(Backend):
    name = "cuda"
    priority = 100
    switches = {"LLMRT_CUDA_SAFE": "0"}  # 1: launch one by one, no CUDA graphs, no PDL

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self._devices: list[CUDADevice] = []

    def probe(self) -> Probe:
        cupy = self.import_package("cupy", INSTALL)
        if isinstance(cupy, Probe):
            return cupy
        runtime = cupy.cuda.runtime
        try:
            count = runtime.getDeviceCount()
            self.versions = {
                "cupy": cupy.__version__,
                "driver": _version(runtime.driverGetVersion()),
                "runtime": _version(runtime.runtimeGetVersion()),
            }
        except Exception as exc:  # CUDARuntimeError, or a missing libcuda
            fix = "install the NVIDIA driver, or check that the GPU is visible (nvidia-smi)"
            return Probe(False, f"no usable NVIDIA driver or GPU ({exc})", fix)
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
