"""Vulkan backend and devices: the physical devices one VkInstance enumerates, and what they can do.

Everything is queried once, in ``probe()``. The VkInstance then stays alive with the backend (it
is destroyed when the backend is closed or garbage-collected, or at exit): physical-device handles
are only valid while their instance lives, the compute kernels will need them, and free memory
(VK_EXT_memory_budget) changes, so ``info()`` re-reads it through the live instance.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Probe

FIX_PACKAGE = "pip install 'llmrt[vulkan]'"
FIX_LOADER = "install the Vulkan loader, e.g. `apt install libvulkan1`"
FIX_DRIVER = (
    "install a Vulkan driver (ICD), e.g. Mesa's `mesa-vulkan-drivers` (lavapipe, on the CPU) or "
    "the GPU vendor's driver; NVIDIA's ICD (libGLX_nvidia.so.0) also needs `libegl1` and "
    "`libglvnd0`"
)

NVIDIA = 0x10DE


def make_api_version(major: int, minor: int, patch: int = 0) -> int:
    return major << 22 | minor << 12 | patch


API_MASK = 0x1FFFFFFF  # drops VK_API_VERSION_VARIANT, which is 0 for Vulkan itself
V1_1, V1_2, V1_3 = (make_api_version(1, minor) for minor in (1, 2, 3))
# The newest API version whose features this backend may use; the loader clamps to what it has.
REQUESTED_API = V1_3

PROPS2_EXT = "VK_KHR_get_physical_device_properties2"
# Lets the loader list "portability" drivers (MoltenVK on macOS); enabling it elsewhere is a no-op.
PORTABILITY_EXT = "VK_KHR_portability_enumeration"
PORTABILITY_BIT = 0x1  # VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR
HEAP_DEVICE_LOCAL = 0x1  # VK_MEMORY_HEAP_DEVICE_LOCAL_BIT

# VkPhysicalDeviceType -> (string, llmrt type). A virtual GPU or "other" device is an accelerator
# of unknown kind: ranking it below real GPUs and above the CPU is the honest guess.
DEVICE_TYPES = {
    0: ("other", DeviceType.ACCEL),
    1: ("integrated_gpu", DeviceType.IGPU),
    2: ("discrete_gpu", DeviceType.GPU),
    3: ("virtual_gpu", DeviceType.ACCEL),
    4: ("cpu", DeviceType.CPU),
}

# VkSubgroupFeatureFlagBits and VkShaderStageFlagBits, bit i named at index i, as in the spec
# without the vendor suffix (rotate is KHR, then core in 1.4; partitioned is NV only).
SUBGROUP_OPERATIONS = (
    "basic", "vote", "arithmetic", "ballot", "shuffle", "shuffle_relative", "clustered", "quad",
    "partitioned", "rotate", "rotate_clustered",
)  # fmt: skip
SHADER_STAGES = (
    "vertex", "tessellation_control", "tessellation_evaluation", "geometry", "fragment", "compute",
    "task", "mesh", "raygen", "any_hit", "closest_hit", "miss", "intersection", "callable",
)  # fmt: skip


def api_version_string(version: int) -> str:
    """VK_API_VERSION_MAJOR/MINOR/PATCH: 3 variant bits on top (dropped), then 7/10/12 bits."""
    return f"{(version >> 22) & 0x7F}.{(version >> 12) & 0x3FF}.{version & 0xFFF}"


def driver_version_string(version: int, vendor_id: int) -> str:
    """driverVersion is vendor-defined: NVIDIA packs 10/8/8/6 bits (580.159.4.0 for 580.159.04);
    the others (Mesa, AMD…) use VK_MAKE_VERSION's 10/10/12."""
    if vendor_id == NVIDIA:
        return f"{version >> 22}.{(version >> 14) & 0xFF}.{(version >> 6) & 0xFF}.{version & 0x3F}"
    return f"{version >> 22}.{(version >> 12) & 0x3FF}.{version & 0xFFF}"


def flag_names(mask: int, names: Sequence[str]) -> list[str]:
    """The names of the bits set in ``mask`` (bit i is ``names[i]``); bits past them are kept
    as hex."""
    return [hex(1 << i) if i >= len(names) else names[i] for i in range(32) if mask >> i & 1]


def _read(vk: Any, kind: Any, value: Any) -> Any:
    """A struct field as llmrt reports it, by its kind: int, str (a char array), bool (a
    VkBool32), or the names of a flag mask's bits (a tuple of them)."""
    if kind is str:
        return vk.ffi.string(value).decode("utf-8", "replace")
    return flag_names(value, kind) if isinstance(kind, tuple) else kind(value)


# The structs chained into vkGetPhysicalDeviceProperties2 and vkGetPhysicalDeviceFeatures2,
# innermost first: (struct, the version that made it core, the extension that brings it to older
# devices, {property: (field, its kind for _read)}).
PROPERTY_STRUCTS = (
    ("VkPhysicalDeviceSubgroupProperties", V1_1, None, {
        "subgroup_size": ("subgroupSize", int),
        "subgroup_operations": ("supportedOperations", SUBGROUP_OPERATIONS),
        "subgroup_stages": ("supportedStages", SHADER_STAGES),
    }),
    ("VkPhysicalDeviceDriverProperties", V1_2, "VK_KHR_driver_properties", {
        "driver_name": ("driverName", str), "driver_info": ("driverInfo", str),
    }),
    ("VkPhysicalDeviceSubgroupSizeControlProperties", V1_3, "VK_EXT_subgroup_size_control", {
        "min_subgroup_size": ("minSubgroupSize", int),
        "max_subgroup_size": ("maxSubgroupSize", int),
        "required_subgroup_size_stages": ("requiredSubgroupSizeStages", SHADER_STAGES),
    }),
)  # fmt: skip
FEATURE_STRUCTS = (
    ("VkPhysicalDeviceShaderIntegerDotProductFeatures", V1_3, None, {
        "integer_dot_product": ("shaderIntegerDotProduct", bool),
    }),
    ("VkPhysicalDevice16BitStorageFeatures", V1_1, "VK_KHR_16bit_storage", {
        "storage_buffer_16bit": ("storageBuffer16BitAccess", bool),
        "uniform_and_storage_buffer_16bit": ("uniformAndStorageBuffer16BitAccess", bool),
        "storage_push_constant_16bit": ("storagePushConstant16", bool),
    }),
    ("VkPhysicalDeviceShaderFloat16Int8Features", V1_2, "VK_KHR_shader_float16_int8", {
        "shader_float16": ("shaderFloat16", bool),
        "shader_int8": ("shaderInt8", bool),
    }),
    ("VkPhysicalDeviceVulkanMemoryModelFeatures", V1_2, "VK_KHR_vulkan_memory_model", {
        "vulkan_memory_model": ("vulkanMemoryModel", bool),
    }),
    ("VkPhysicalDeviceSubgroupSizeControlFeatures", V1_3, "VK_EXT_subgroup_size_control", {
        "subgroup_size_control": ("subgroupSizeControl", bool),
        "compute_full_subgroups": ("computeFullSubgroups", bool),
    }),
)  # fmt: skip


def _absent() -> dict[str, Any]:
    """The structs' properties where the driver cannot say: no number or text, no feature, no
    flags."""
    return {
        key: {int: None, str: None, bool: False}.get(kind, [])
        for *_, fields in PROPERTY_STRUCTS + FEATURE_STRUCTS
        for key, (_, kind) in fields.items()
    }


# VkComponentTypeKHR values, and VK_SCOPE_SUBGROUP_KHR
COMPONENT_TYPES = {0: "f16", 1: "f32", 2: "f64", 3: "i8", 4: "i16", 5: "i32", 6: "i64", 7: "u8",
                   8: "u16", 9: "u32", 10: "u64"}  # fmt: skip
SCOPE_SUBGROUP = 3


def _cooperative_matrices(vk: Any, instance: Any, physical: Any) -> list[str]:
    """The subgroup-scope products VK_KHR_cooperative_matrix offers, as "MxNxK A*B+C=R"."""
    get = _instance_proc(vk, instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR")
    if get is None:
        return []
    count = vk.ffi.new("uint32_t*")
    get(physical, count, vk.ffi.NULL)
    found = vk.ffi.new("VkCooperativeMatrixPropertiesKHR[]", count[0])
    for entry in found:
        entry.sType = vk.VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR
    get(physical, count, found)
    t = COMPONENT_TYPES.get
    return [
        f"{e.MSize}x{e.NSize}x{e.KSize} {t(e.AType)}*{t(e.BType)}+{t(e.CType)}={t(e.ResultType)}"
        for e in found[0 : count[0]]
        if e.scope == SCOPE_SUBGROUP
    ]


def _instance_proc(vk: Any, instance: Any, name: str) -> Any:
    """An instance-level entry point, or None where the loader has none by that name.

    The ``vulkan`` package's own ``vkGetInstanceProcAddr`` only wraps extension names (it raises
    ExtensionNotSupportedError for the core ``vkGetPhysicalDeviceProperties2``), so the raw
    pointer is fetched from ``vk.lib`` and called with cffi directly.
    """
    pointer = vk.lib.vkGetInstanceProcAddr(instance, name.encode())
    return None if pointer == vk.ffi.NULL else vk.ffi.cast(f"PFN_{name}", pointer)


def _summary(p: dict[str, Any]) -> str:
    """The few properties worth a column in ``llmrt devices``."""
    driver = f"driver {p['driver_version']}"
    if p["driver_name"]:
        driver = f"{p['driver_name']} {p['driver_info'] or p['driver_version']}"
    text = f"Vulkan {p['api_version']}, {driver}"
    if p["subgroup_size"]:
        text += f", subgroup {p['subgroup_size']}"
    flags = [
        ("fp16", "shader_float16"),
        ("int8", "shader_int8"),
        ("coopmat", "cooperative_matrix"),
        ("int8dot", "integer_dot_product"),
    ]
    return text + "".join(f", {label}" for label, key in flags if p[key])


def _query_device(
    vk: Any, instance: Any, instance_api: int, khr: bool, physical: Any
) -> tuple[DeviceInfo, Callable[[], int] | None]:
    """Everything llmrt reports about one physical device, read once (``instance_api``: the
    version the instance was created with; ``khr``: whether it has VK_KHR_get_physical_device_
    properties2), and the reader of its free memory where VK_EXT_memory_budget can say."""
    props = vk.vkGetPhysicalDeviceProperties(physical)
    # the version whose structs may be chained: both the device and the instance must have it
    api = min(props.apiVersion & API_MASK, instance_api)
    limits = props.limits
    extensions = {e.extensionName for e in vk.vkEnumerateDeviceExtensionProperties(physical, None)}
    type_name, device_type = DEVICE_TYPES.get(props.deviceType, ("other", DeviceType.ACCEL))

    def entry_point(name: str) -> Any:
        # Core 1.1 physical-device commands are valid only for devices that support 1.1; the
        # KHR instance extension covers 1.0 devices too.
        core = _instance_proc(vk, instance, name) if api >= V1_1 else None
        return core or (_instance_proc(vk, instance, name + "KHR") if khr else None)

    memory = vk.vkGetPhysicalDeviceMemoryProperties(physical)
    heaps = [
        {"size": int(h.size), "device_local": bool(h.flags & HEAP_DEVICE_LOCAL)}
        for h in (memory.memoryHeaps[i] for i in range(memory.memoryHeapCount))
    ]
    local = [i for i, h in enumerate(heaps) if h["device_local"]]
    heap = max(local, key=lambda i: heaps[i]["size"]) if local else None

    properties: dict[str, Any] = {
        "api_version": api_version_string(props.apiVersion),
        "driver_version": driver_version_string(props.driverVersion, props.vendorID),
        "vendor_id": f"0x{props.vendorID:04x}",
        "device_id": f"0x{props.deviceID:04x}",
        "device_type": type_name,
        "memory_heaps": heaps,
        "max_compute_workgroup_size": [int(n) for n in limits.maxComputeWorkGroupSize],
        "max_compute_workgroup_invocations": int(limits.maxComputeWorkGroupInvocations),
        "max_storage_buffer_range": int(limits.maxStorageBufferRange),
        "cooperative_matrix": "VK_KHR_cooperative_matrix" in extensions,
        "cooperative_matrix_shapes": [],
        **_absent(),  # what the structs chained below fill in where the driver can say
    }
    for query, structs in (("PhysicalDeviceProperties2", PROPERTY_STRUCTS),
                           ("PhysicalDeviceFeatures2", FEATURE_STRUCTS)):  # fmt: skip
        get = entry_point(f"vkGet{query}")
        if get is None:
            continue
        # Each chained struct is held (in `chained`, `outer`) until it has been read: pNext is a
        # raw pointer into its memory, which cffi frees with the Python object.
        chain, chained = None, []
        for struct, core, extension, fields in structs:
            if api >= core or extension in extensions:
                chain = getattr(vk, struct)(pNext=chain)
                chained.append((chain, fields))
        outer = getattr(vk, f"Vk{query}")(pNext=chain)
        get(physical, vk.ffi.addressof(outer))
        for struct, fields in chained:
            for key, (field, kind) in fields.items():
                properties[key] = _read(vk, kind, getattr(struct, field))
    if properties["cooperative_matrix"]:
        properties["cooperative_matrix_shapes"] = _cooperative_matrices(vk, instance, physical)

    info = DeviceInfo(
        name=props.deviceName,
        type=device_type,
        memory_total=heaps[heap]["size"] if heap is not None else None,
        properties=properties,
        summary=_summary(properties),
    )
    get_memory2 = entry_point("vkGetPhysicalDeviceMemoryProperties2")
    if "VK_EXT_memory_budget" not in extensions or heap is None or get_memory2 is None:
        return info, None

    def memory_free() -> int:
        """What VK_EXT_memory_budget says this process may still allocate from the heap."""
        budget = vk.VkPhysicalDeviceMemoryBudgetPropertiesEXT()
        memory2 = vk.VkPhysicalDeviceMemoryProperties2(pNext=budget)
        get_memory2(physical, vk.ffi.addressof(memory2))
        return max(0, int(budget.heapBudget[heap]) - int(budget.heapUsage[heap]))

    return info, memory_free


class VulkanDevice(Device):
    """One VkPhysicalDevice; ``index`` is its place in vkEnumeratePhysicalDevices' order.

    The logical device (``runtime``) is created on first use: listing devices stays cheap."""

    def __init__(self, backend: VulkanBackend, index: int, vk: Any, physical: Any,
                 info: DeviceInfo, memory_free: Callable[[], int] | None) -> None:  # fmt: skip
        super().__init__(backend, index)
        self.vk, self.physical, self._info, self._memory_free = vk, physical, info, memory_free
        self._runtime: Any = None

    def info(self) -> DeviceInfo:
        try:  # free memory is a hint; never fail info() over it
            free = self._memory_free() if self._memory_free is not None else None
        except Exception:
            free = None
        return dataclasses.replace(self._info, memory_free=free)

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            from llmrt_vulkan.runtime import Runtime

            self._runtime = Runtime(self.vk, self.physical, self._info.properties)
        return self._runtime

    def supports_op(self, node: Any) -> bool:
        from llmrt_vulkan.lower import supports

        return supports(node)

    def upload(self, tensor: Any) -> Any:
        from llmrt_vulkan.program import VulkanWeight

        raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
        buf = self.runtime.buffer(raw.size + 16)  # kernels may read a block's words past its end
        self.runtime.write(buf, raw)
        return VulkanWeight(buf)

    def allocate(self, shape: tuple[int, ...], dtype: Any) -> Any:
        from llmrt_vulkan.program import VulkanState

        buf = self.runtime.buffer(int(np.prod(shape)) * self.buffer_dtype(dtype).itemsize)
        self.runtime.fill_zero(buf)
        return VulkanState(self, self.runtime, buf, tuple(shape), dtype)

    def compile(self, graph: Any, bindings: Any) -> Any:
        from llmrt_vulkan.program import VulkanProgram

        return VulkanProgram(self.runtime, graph, bindings, self)


class _NoDriver(Exception):
    """Probing found no usable Vulkan driver; the message says which call failed."""


class VulkanBackend(Backend):
    name = "vulkan"
    priority = 50
    switches = {"LLMRT_VULKAN_KERNELS": ""}  # gpu or cpu: that kernel family on any device

    def __init__(self) -> None:
        self._devices: list[VulkanDevice] = []
        self._destroy: Callable[[], Any] = lambda: None

    def probe(self) -> Probe:
        library = "the Vulkan loader (libvulkan.so.1)"  # the package opens it at import
        vk = self.import_package("vulkan", FIX_PACKAGE, library, FIX_LOADER,
                                 what="the `vulkan` Python package")  # fmt: skip
        if isinstance(vk, Probe):
            return vk
        details: dict[str, Any] = {"vulkan_package": getattr(vk, "__version__", None)}
        self.close()  # a second probe() starts afresh
        try:
            self._probe(vk, details)
        except _NoDriver as exc:
            self.close()
            return Probe(False, str(exc), FIX_DRIVER, details)
        except Exception as exc:  # a driver or package surprise must not escape probe()
            self.close()
            reason = f"probing Vulkan failed: {type(exc).__name__}: {exc}"
            return Probe(False, reason, details=details)
        return Probe(True, details=details)

    def _probe(self, vk: Any, details: dict[str, Any]) -> None:
        try:
            loader = vk.vkEnumerateInstanceVersion()
        except AttributeError:  # a 1.0 loader does not export vkEnumerateInstanceVersion
            loader = make_api_version(1, 0)
        details["loader_api_version"] = api_version_string(loader)
        # A 1.0 loader rejects any other apiVersion; 1.1+ loaders accept any and clamp.
        api = REQUESTED_API if (loader & API_MASK) >= V1_1 else make_api_version(1, 0)
        details["instance_api_version"] = api_version_string(min(api, loader & API_MASK))

        available = {e.extensionName for e in vk.vkEnumerateInstanceExtensionProperties(None)}
        enabled = [name for name in (PROPS2_EXT, PORTABILITY_EXT) if name in available]
        app = vk.VkApplicationInfo(pApplicationName="llmrt", pEngineName="llmrt", apiVersion=api)
        create = vk.VkInstanceCreateInfo(
            flags=PORTABILITY_BIT if PORTABILITY_EXT in enabled else 0,
            pApplicationInfo=app,
            ppEnabledExtensionNames=enabled,
        )
        try:
            instance = vk.vkCreateInstance(create, None)
        except (vk.VkError, vk.VkException) as exc:
            # With no ICD at all the loader answers VK_ERROR_INCOMPATIBLE_DRIVER here.
            raise _NoDriver(f"vkCreateInstance failed: {type(exc).__name__}") from exc
        self._destroy = weakref.finalize(self, vk.vkDestroyInstance, instance, None)
        try:
            physical = list(vk.vkEnumeratePhysicalDevices(instance))
        except (vk.VkError, vk.VkException) as exc:
            raise _NoDriver(f"vkEnumeratePhysicalDevices failed: {type(exc).__name__}") from exc
        if not physical:
            raise _NoDriver("Vulkan found no physical device (no driver)")

        khr = PROPS2_EXT in enabled
        self._devices = [
            VulkanDevice(self, i, vk, p, *_query_device(vk, instance, api, khr, p))
            for i, p in enumerate(physical)
        ]
        details["devices"] = len(self._devices)

    def devices(self) -> Sequence[Device]:
        return list(self._devices)

    def close(self) -> None:
        """Destroy the VkInstance; this backend's devices are unusable afterwards."""
        self._devices = []
        self._destroy()
