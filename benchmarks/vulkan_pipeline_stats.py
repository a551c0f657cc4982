"""What the driver made of llmrt's Vulkan shaders: registers, shared memory, spills and the like
per pipeline, as VK_KHR_pipeline_executable_properties reports them (NVIDIA's driver has it;
lavapipe has not). For the prompt matmul's variants (Q4_0 weights) and probes, and the prompt
attention's variants at head sizes 64 and 128: the question behind it is why matmul_coop runs two
or more weight blocks a subgroup at under half the speed of one (BENCHMARKS.md, 2026-12-07).

    LLMRT_GLSLC=glslc python benchmarks/vulkan_pipeline_stats.py vulkan:0

PROBES="a,b" adds vulkan_coop_probe.py's probes whose labels contain a or b.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import vulkan as vk

EXT = "VK_KHR_pipeline_executable_properties"
CAPTURE_STATISTICS = 0x40  # VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR
_kept: list[Any] = []  # chained feature structs, alive until the device is made


def _enable_statistics() -> None:
    """Every logical device made from here on enables the extension, every compute pipeline
    captures its statistics (the Runtime's own calls, wrapped)."""
    device_info, pipeline_info = vk.VkDeviceCreateInfo, vk.VkComputePipelineCreateInfo

    def device_with_ext(**kw: Any) -> Any:
        feature = vk.VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR(
            pNext=kw.pop("pNext", None), pipelineExecutableInfo=vk.VK_TRUE
        )
        _kept.append(feature)
        kw["ppEnabledExtensionNames"] = [*(kw.get("ppEnabledExtensionNames") or []), EXT]
        return device_info(pNext=feature, **kw)

    vk.VkDeviceCreateInfo = device_with_ext
    vk.VkComputePipelineCreateInfo = lambda **kw: pipeline_info(flags=CAPTURE_STATISTICS, **kw)


def _value(stat: Any) -> Any:
    fmt, v = stat.format, stat.value
    return [bool(v.b32), int(v.i64), int(v.u64), float(v.f64)][fmt]


def _entries(rt: Any, command: str, info: Any, struct: str, stype: int) -> list[Any]:
    """The array a vkGet...KHR(device, info, count, array) query fills, its entries' sType set
    (the `vulkan` package's own wrappers leave it 0), through the raw entry point."""
    pointer = vk.lib.vkGetDeviceProcAddr(rt.device, command.encode())
    if pointer == vk.ffi.NULL:
        raise SystemExit(f"the driver has no {command}")
    fn = vk.ffi.cast(f"PFN_{command}", pointer)
    count = vk.ffi.new("uint32_t*")
    fn(rt.device, vk.ffi.addressof(info), count, vk.ffi.NULL)
    found = vk.ffi.new(f"{struct}[]", count[0])
    for entry in found:
        entry.sType = stype
    fn(rt.device, vk.ffi.addressof(info), count, found)
    return list(found[0 : count[0]])


def statistics(rt: Any, name: str, n_bindings: int, push: int, spec: tuple[int, ...]) -> str:
    """One line: each executable's statistics of the pipeline of variant `name`."""
    pipe = rt.pipeline(name, n_bindings, push, spec).handle
    stype = vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR
    executables = _entries(
        rt, "vkGetPipelineExecutablePropertiesKHR", vk.VkPipelineInfoKHR(pipeline=pipe),
        "VkPipelineExecutablePropertiesKHR", stype,
    )  # fmt: skip
    parts = []
    for i in range(len(executables)):
        info = vk.VkPipelineExecutableInfoKHR(pipeline=pipe, executableIndex=i)
        found = _entries(
            rt, "vkGetPipelineExecutableStatisticsKHR", info, "VkPipelineExecutableStatisticKHR",
            vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR,
        )  # fmt: skip
        parts += [f"{vk.ffi.string(s.name).decode()}={_value(s)}" for s in found]
    return f"{name} {spec}: " + ", ".join(parts)


def main(device_id: str) -> None:
    from llmrt.device import get_device

    dev = get_device(device_id)
    found = vk.vkEnumerateDeviceExtensionProperties(dev.physical, None)
    if EXT not in {e.extensionName for e in found}:
        raise SystemExit(f"{device_id}: the driver has no {EXT}")
    _enable_statistics()  # before the runtime makes its logical device
    rt = dev.runtime
    q4_0 = (3,)  # quant.glsl's TYPE of Q4_0
    for name in (rt.coopmat, rt.coopmat_wide):
        if name:
            print(statistics(rt, name, 3, 36, q4_0), flush=True)
    for d in (64, 128):
        if rt.coopmat_attn:
            print(statistics(rt, rt.coopmat_attn, 5, 76, (d, d, 1, 1, 4)), flush=True)
        print(statistics(rt, "flash_attn", 5, 76, (d, d, 1, 1, 4)), flush=True)
    if os.environ.get("PROBES"):
        sys.path.insert(0, os.path.dirname(__file__))
        from vulkan_coop_probe import probe_paths

        for label in probe_paths(dev):
            print(f"{label}: " + statistics(rt, rt.coopmat, 3, 36, q4_0), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
