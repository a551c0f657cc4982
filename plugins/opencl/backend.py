"""OpenCL backend and devices, queried through pyopencl (every platform's devices, in order).

Importing this module does not import pyopencl: the probe does, and a device makes its context,
its one in-order queue and its kernel programs when it first uploads or compiles.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Executable, Probe
from llmrt.ir import Op

INSTALL = "pip install 'llmrt[opencl]'"
# on NVIDIA (compute capability 6.1 on: "nv_dp4a"), every program built with -D NV_SHFL=1: the
# reductions of whole warps by warp shuffles (common.h) instead of local-memory trees
NV_SHFL = True
NO_ICD = (
    "install an OpenCL driver (ICD): your GPU vendor's, or PoCL for the CPU "
    "(apt install pocl-opencl-icd, or pip install 'pyopencl[pocl]')"
)
# Extensions that decide which kernels a device can run fast.
KEY_EXTENSIONS = (
    "cl_khr_fp16", "cl_khr_fp64", "cl_khr_subgroups", "cl_intel_subgroups",
    "cl_khr_integer_dot_product", "cl_intel_required_subgroup_size", "cl_qcom_reqd_sub_group_size",
    "cl_khr_command_buffer",
)  # fmt: skip


def _describe(dev: Any, platform: Any, cl: Any) -> dict[str, Any]:
    extensions = dev.extensions.split()
    kind = dev.type
    if kind & cl.device_type.GPU:
        dtype = DeviceType.IGPU if dev.host_unified_memory else DeviceType.GPU
    elif kind & cl.device_type.CPU:
        dtype = DeviceType.CPU
    else:
        dtype = DeviceType.ACCEL
    return {
        "name": dev.name.strip(),
        "type": dtype,
        "memory_total": dev.global_mem_size,
        "properties": {
            "platform": platform.name.strip(),
            "platform_version": platform.version.strip(),
            "vendor": dev.vendor.strip(),
            "version": dev.version.strip(),
            "driver_version": dev.driver_version.strip(),
            "opencl_c_version": getattr(dev, "opencl_c_version", "").strip(),
            "compute_units": dev.max_compute_units,
            "max_clock_mhz": dev.max_clock_frequency,
            "max_alloc_bytes": dev.max_mem_alloc_size,
            "local_memory_bytes": dev.local_mem_size,
            "max_work_group_size": dev.max_work_group_size,
            "unified_memory": bool(dev.host_unified_memory),
            "fp16": "cl_khr_fp16" in extensions,
            "key_extensions": [e for e in KEY_EXTENSIONS if e in extensions],
            "extensions": extensions,
        },
    }


class OpenCLDevice(Device):
    def __init__(
        self, backend: OpenCLBackend, index: int, desc: dict[str, Any], cl_device: Any
    ) -> None:
        super().__init__(backend, index)
        self._desc = desc
        self.cl_device = cl_device
        self._programs: dict[tuple, Any] = {}

    def info(self) -> DeviceInfo:
        d = self._desc
        p = d["properties"]
        api = " ".join(p["version"].split()[:2])  # "OpenCL 3.0"; vendors append free text
        summary = f"{api}, driver {p['driver_version']}, {p['compute_units']} CUs"
        summary += ", fp16" if p["fp16"] else ""
        return DeviceInfo(d["name"], d["type"], d["memory_total"], None, p, summary)

    @functools.cached_property
    def context(self) -> Any:
        import pyopencl as cl

        return cl.Context([self.cl_device])

    @functools.cached_property
    def queue(self) -> Any:
        import pyopencl as cl

        return cl.CommandQueue(self.context)  # in order: a step's kernels run one after another

    @functools.cached_property
    def limits(self) -> dict[str, int]:
        import pyopencl as cl

        dev = self.cl_device
        return {
            "cpu": int(bool(dev.type & cl.device_type.CPU)),  # PoCL: per-row kernels pay there
            "max_work_group_size": int(dev.max_work_group_size),
            "local_mem_size": int(dev.local_mem_size),
            "compute_units": int(dev.max_compute_units),
            "max_alloc": int(dev.max_mem_alloc_size),
            # packed int8 dot products (the integer mat-vecs' -D USE_IDP=1)
            "integer_dot": int("cl_khr_integer_dot_product" in dev.extensions.split()),
            # else NVIDIA's dp4a through inline PTX (compute capability 6.1 on; -D NV_DP4A=1)
            "nv_dp4a": int(_nv_compute_capability(dev) >= (6, 1)),
            # and its int8 tensor cores through inline PTX (8.0 on: gemmq's -D GQ_MMA=1)
            "nv_mma": int(_nv_compute_capability(dev) >= (8, 0)),
        }

    def program(self, file: str, defines: tuple[tuple[str, int], ...]) -> Any:
        """kernels/<file> built for this device with -D defines, once a process (pyopencl keeps
        the binary on disk per device and driver)."""
        import pyopencl as cl

        if self.limits.get("portable"):  # the tests: the CPU kernels without x86 builtins
            defines = (*defines, ("LLMRT_PORTABLE", 1))
        key = (file, defines)
        if key not in self._programs:
            kernels = Path(__file__).parent / "kernels"
            source = (kernels / file).read_text()

            def build(defs: tuple[tuple[str, int], ...]) -> Any:
                options = ["-I", str(kernels), *(f"-D{k}={v}" for k, v in defs)]
                return cl.Program(self.context, source).build(options=options)

            program = None
            # a driver that refuses the PTX builds it again with the local-memory trees
            with contextlib.suppress(cl.Error):
                if self.limits.get("nv_dp4a") and NV_SHFL:
                    program = build((*defines, ("NV_SHFL", 1)))
            self._programs[key] = build(defines) if program is None else program
        return self._programs[key]

    @property
    def max_weight_part(self) -> int:
        """Bytes of a weight one buffer holds (CL_DEVICE_MAX_MEM_ALLOC_SIZE, a quarter of memory
        on many phones' GPUs, less the 16 bytes of slack an upload adds): a larger weight is held
        in parts of whole rows (llmrt.lower.split)."""
        return self.limits["max_alloc"] - 16

    def supports_op(self, node: Any) -> bool:
        """What the kernels implement (llmrt_opencl.lower). A product or a lookup reads a weight
        matrix of any size (in parts, a launch each); any other node reads no weight larger than
        one buffer: that runs on the host."""
        from llmrt_opencl.lower import supports

        if not supports(node):
            return False
        return all(
            src.op is not Op.WEIGHT or weight_nbytes(src) <= self.max_weight_part
            or (node.op in (Op.MUL_MAT, Op.GET_ROWS) and src is node.srcs[0]
                and len(src.shape) == 2)
            for src in node.srcs
        )  # fmt: skip

    def upload(self, tensor: Any) -> Any:
        """A weight's GGUF blocks as they are (no f32 copy), 16 bytes of slack past the end of
        each buffer; one larger than a buffer may be in parts of whole rows."""
        import pyopencl as cl

        from llmrt.lower.split import row_chunks
        from llmrt_opencl.program import OpenCLWeight, allocate

        raw = np.ascontiguousarray(tensor.data).reshape(-1).view(np.uint8)
        m = int(np.prod(tensor.shape[:-1], dtype=np.int64))
        row_bytes = tensor.type.row_nbytes(tensor.shape[-1])
        parts = []
        for r0, rows in row_chunks(m, row_bytes, self.max_weight_part):
            part = raw[r0 * row_bytes : (r0 + rows) * row_bytes]
            buf = allocate(self.context, part.size + 16, f"weight {tensor.name}", self.id)
            cl.enqueue_copy(self.queue, buf, part, is_blocking=True)
            parts.append((r0 * row_bytes, buf))
        return OpenCLWeight(parts[0][1], tensor.type, tuple(tensor.shape), raw.size, tuple(parts))

    def allocate(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import pyopencl as cl

        from llmrt_opencl.program import OpenCLTensor, allocate

        nbytes = int(np.prod(shape)) * self.buffer_dtype(dtype).itemsize
        buf = allocate(self.context, nbytes, f"tensor {list(shape)}", self.id)
        cl.enqueue_fill_buffer(self.queue, buf, np.uint8(0), 0, max(nbytes, 16)).wait()
        return OpenCLTensor(self, buf, tuple(shape), dtype)

    def compile(self, graph: Any, bindings: Mapping[str, Any]) -> Executable:
        from llmrt_opencl.program import OpenCLProgram

        return OpenCLProgram(self, graph, bindings)


class OpenCLBackend(Backend):
    name = "opencl"
    priority = 30
    switches = {"LLMRT_OPENCL_SAFE": "0"}  # 1: enqueue kernel by kernel, no command buffer

    def __init__(self) -> None:
        self._devices: list[OpenCLDevice] = []

    def probe(self) -> Probe:
        cl = self.import_package("pyopencl", INSTALL)
        if isinstance(cl, Probe):
            return cl
        try:
            platforms = cl.get_platforms()
        except cl.Error as exc:  # PLATFORM_NOT_FOUND_KHR when no ICD is registered
            return Probe(False, f"no OpenCL platform ({exc.code if hasattr(exc, 'code') else exc})",
                         NO_ICD)  # fmt: skip
        found = []
        for platform in platforms:
            try:
                devices = platform.get_devices()
            except cl.Error:  # a platform with no devices raises DEVICE_NOT_FOUND
                continue
            found += [(_describe(dev, platform, cl), dev) for dev in devices]
        if not found:
            return Probe(False, "OpenCL platforms have no devices", NO_ICD)
        self._devices = [OpenCLDevice(self, i, d, dev) for i, (d, dev) in enumerate(found)]
        return Probe(True, details={"pyopencl": cl.VERSION_TEXT,
                                    "platforms": [p.name.strip() for p in platforms]})  # fmt: skip

    def devices(self) -> Sequence[Device]:
        return self._devices


def _nv_compute_capability(dev: Any) -> tuple[int, int]:
    """An NVIDIA device's compute capability (cl_nv_device_attribute_query), (0, 0) elsewhere."""
    if "cl_nv_device_attribute_query" not in dev.extensions.split():
        return 0, 0
    try:
        return int(dev.compute_capability_major_nv), int(dev.compute_capability_minor_nv)
    except Exception:  # noqa: BLE001 (a pyopencl without the query)
        return 0, 0


def weight_nbytes(node: Any) -> int:
    """Bytes of a weight leaf in its GGUF blocks."""
    rows = int(np.prod(node.shape[:-1], dtype=np.int64))
    return rows * node.dtype.row_nbytes(node.shape[-1])
