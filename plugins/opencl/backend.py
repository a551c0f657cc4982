"""OpenCL backend and devices, queried through pyopencl (every platform's devices, in order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Probe

INSTALL = "pip install 'llmrt[opencl]'"
NO_ICD = (
    "install an OpenCL driver (ICD): your GPU vendor's, or PoCL for the CPU "
    "(apt install pocl-opencl-icd, or pip install 'pyopencl[pocl]')"
)
# Extensions that decide which kernels a device can run fast.
KEY_EXTENSIONS = (
    "cl_khr_fp16", "cl_khr_fp64", "cl_khr_subgroups", "cl_intel_subgroups",
    "cl_khr_integer_dot_product", "cl_intel_required_subgroup_size", "cl_qcom_reqd_sub_group_size",
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
    def __init__(self, backend: OpenCLBackend, index: int, desc: dict[str, Any]) -> None:
        super().__init__(backend, index)
        self._desc = desc

    def info(self) -> DeviceInfo:
        d = self._desc
        p = d["properties"]
        api = " ".join(p["version"].split()[:2])  # "OpenCL 3.0"; vendors append free text
        summary = f"{api}, driver {p['driver_version']}, {p['compute_units']} CUs"
        summary += ", fp16" if p["fp16"] else ""
        return DeviceInfo(d["name"], d["type"], d["memory_total"], None, p, summary)


class OpenCLBackend(Backend):
    name = "opencl"
    priority = 30

    def __init__(self) -> None:
        self._devices: list[OpenCLDevice] = []

    def probe(self) -> Probe:
        try:
            import pyopencl as cl
        except ImportError:
            return Probe(False, "pyopencl is not installed", INSTALL)
        except Exception as exc:
            return Probe(False, f"pyopencl failed to import: {exc}", f"reinstall: {INSTALL}")
        try:
            platforms = cl.get_platforms()
        except cl.Error as exc:  # PLATFORM_NOT_FOUND_KHR when no ICD is registered
            return Probe(False, f"no OpenCL platform ({exc.code if hasattr(exc, 'code') else exc})",
                         NO_ICD)  # fmt: skip
        descs = []
        for platform in platforms:
            try:
                devices = platform.get_devices()
            except cl.Error:  # a platform with no devices raises DEVICE_NOT_FOUND
                continue
            descs += [_describe(dev, platform, cl) for dev in devices]
        if not descs:
            return Probe(False, "OpenCL platforms have no devices", NO_ICD)
        self._devices = [OpenCLDevice(self, i, d) for i, d in enumerate(descs)]
        return Probe(True, details={"pyopencl": cl.VERSION_TEXT,
                                    "platforms": [p.name.strip() for p in platforms]})  # fmt: skip

    def devices(self) -> Sequence[Device]:
        return self._devices
