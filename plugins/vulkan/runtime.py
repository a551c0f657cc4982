"""The Vulkan objects a device needs to compute: a logical device with one compute queue, buffers
and their memory, pipelines (created once per shader variant and specialization, then cached),
and one-off submissions for uploads.

Memory: where one memory type is both device-local and host-visible (lavapipe, integrated GPUs,
resizable BAR), every buffer lives there and is written through its mapping. Elsewhere (discrete
GPUs) buffers are device-local and filled through a host-visible staging buffer; a compiled
graph's inputs and outputs go through staging buffers of its own, copied in its command buffer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrt_vulkan import shaders

COMPUTE_BIT, GRAPHICS_BIT = 0x2, 0x1  # VkQueueFlagBits
DEVICE_LOCAL, HOST_VISIBLE, HOST_COHERENT, HOST_CACHED = 0x1, 0x2, 0x4, 0x8  # memory properties
STAGING_CHUNK = 64 << 20
REQUIRE_FULL_SUBGROUPS = 0x2  # VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT
RESET_COMMAND_BUFFER = 0x2  # VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT
STORAGE_BUFFER, TRANSFER_SRC, TRANSFER_DST = 0x20, 0x1, 0x2  # VkBufferUsageFlagBits


class VulkanError(RuntimeError):
    pass


@dataclass(eq=False)
class Buffer:
    """A VkBuffer with its own memory; ``host`` is a uint8 numpy view of its mapping, if mapped."""

    handle: Any
    size: int
    host: np.ndarray | None
    cached: bool = False  # host-visible through the CPU's caches (fast to read back)


@dataclass(frozen=True)
class Pipeline:
    handle: Any
    layout: Any
    set_layout: Any


def _coopmat_variant(properties: dict[str, Any]) -> tuple[str | None, int | None]:
    """The matmul_coop variant for prompt matmuls on the device's matrix units, or None, and the
    subgroup size its pipelines must require (None where the device's is fixed at the variant's).
    It needs the variant's f16 product, fp16 arithmetic, the Vulkan memory model its loads are
    written in, and subgroups of its size (they tile a workgroup's outputs): the device's only
    size, or one it lets a compute pipeline require (VK_EXT_subgroup_size_control, as RDNA3's
    wave32 among 32 and 64)."""
    api = tuple(int(n) for n in str(properties.get("api_version", "1.0")).split(".")[:2])
    needs = ("shader_float16", "vulkan_memory_model")
    if api < (1, 3) or not all(properties.get(k) for k in needs):
        return None, None
    low, high = properties.get("min_subgroup_size"), properties.get("max_subgroup_size")
    can_require = (
        properties.get("subgroup_size_control") and properties.get("compute_full_subgroups")
        and "compute" in properties.get("required_subgroup_size_stages", ())
    )  # fmt: skip
    shapes = properties.get("cooperative_matrix_shapes", ())
    for shape, size, variant in (("16x16x16", 32, "matmul_coop"), ("8x8x8", 8, "matmul_coop8")):
        if f"{shape} f16*f16+f32=f32" not in shapes or low is None or not low <= size <= high:
            continue
        if low == high:
            return variant, None
        if can_require:
            return variant, size
    return None, None


class Runtime:
    """A logical device on one physical device, shared by everything compiled for it."""

    def __init__(self, vk: Any, physical: Any, properties: dict[str, Any]) -> None:
        self.vk, self.physical = vk, physical
        ops = properties.get("subgroup_operations", [])
        self.subgroups = "arithmetic" in ops and "compute" in properties.get("subgroup_stages", [])
        self.clustered = self.subgroups and "clustered" in ops
        # OpSDot on packed bytes (core in Vulkan 1.3): the integer mat-vec's "_dot" variants.
        self.int_dot = bool(properties.get("integer_dot_product"))
        # A device emulated on the CPU (lavapipe) runs invocations as SIMD lanes and pays dearly
        # for workgroup barriers: it gets the barrier-free kernels (LLMRT_VULKAN_KERNELS=gpu|cpu,
        # the backend's one debugging switch, overrides the choice). A GPU's submissions are
        # waited for by polling the fence, a CPU device's (it needs the cores) by sleeping.
        on_cpu = properties.get("device_type") == "cpu"
        self.spin_wait = not on_cpu
        choice = os.environ.get("LLMRT_VULKAN_KERNELS", "")
        self.cpu = choice == "cpu" or (choice != "gpu" and on_cpu)
        self.max_range = int(properties.get("max_storage_buffer_range") or (1 << 27))
        limits = vk.vkGetPhysicalDeviceProperties(physical).limits
        self.max_groups = int(limits.maxComputeWorkGroupCount[0])
        self.max_shared = int(limits.maxComputeSharedMemorySize)
        self.coopmat, self.coopmat_subgroup = _coopmat_variant(properties)
        # its _wide variant where the device's shared memory holds its tiles (NVIDIA's 46,080 B)
        wide = f"{self.coopmat}_wide"
        fits = self.coopmat and shaders.coop_shared_bytes(wide) <= self.max_shared
        self.coopmat_wide = wide if fits else None
        # the prompt attention on the matrix units: its rows' softmax needs clustered and vote
        # subgroup operations
        attn = self.coopmat and self.clustered and "vote" in ops
        self.coopmat_attn = self.coopmat.replace("matmul", "flash_attn") if attn else None
        self._create_device()
        self._read_memory_types()
        self._pipelines: dict[tuple[str, tuple[int, ...]], Pipeline] = {}
        self._modules: dict[str, Any] = {}
        self._gelu: Buffer | None = None

    def _create_device(self) -> None:
        """The logical device, with one compute queue, a command pool and a fence."""
        vk = self.vk
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        compute = [i for i, f in enumerate(families) if f.queueFlags & COMPUTE_BIT]
        if not compute:
            raise VulkanError("the device has no compute queue")
        # a compute-only family (no graphics) when there is one: it is the async compute engine
        self.family = min(compute, key=lambda i: families[i].queueFlags & GRAPHICS_BIT)
        priorities = vk.ffi.new("float[]", [1.0])
        queue_info = vk.VkDeviceQueueCreateInfo(
            queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=priorities
        )
        # pNext holds raw pointers: the chained structs are kept alive in `features`
        features: list[Any] = []
        for wanted, name, fields in (
            (self.int_dot, "ShaderIntegerDotProductFeatures", ("shaderIntegerDotProduct",)),
            (self.coopmat, "CooperativeMatrixFeaturesKHR", ("cooperativeMatrix",)),
            (self.coopmat, "VulkanMemoryModelFeatures", ("vulkanMemoryModel",)),
            (self.coopmat, "ShaderFloat16Int8Features", ("shaderFloat16",)),
            (self.coopmat_subgroup, "SubgroupSizeControlFeatures",
             ("subgroupSizeControl", "computeFullSubgroups")),
        ):  # fmt: skip
            if wanted:
                next_ = features[-1] if features else None
                on = dict.fromkeys(fields, vk.VK_TRUE)
                features.append(getattr(vk, f"VkPhysicalDevice{name}")(pNext=next_, **on))
        extensions = ["VK_KHR_cooperative_matrix"] if self.coopmat else []
        device_info = vk.VkDeviceCreateInfo(
            pNext=features[-1] if features else None, queueCreateInfoCount=1,
            pQueueCreateInfos=[queue_info], ppEnabledExtensionNames=extensions,
        )  # fmt: skip
        self.device = vk.vkCreateDevice(self.physical, device_info, None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        pool_info = vk.VkCommandPoolCreateInfo(
            queueFamilyIndex=self.family, flags=RESET_COMMAND_BUFFER
        )
        self.command_pool = vk.vkCreateCommandPool(self.device, pool_info, None)
        self.fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
        # Created after the backend's VkInstance finalizer, so at exit it runs first: the logical
        # device goes before its instance (the other order crashed NVIDIA's driver at exit).
        weakref.finalize(self, _destroy_device, vk, self.device)

    def _read_memory_types(self) -> None:
        """Each memory type's flags and heap, and which flags buffers take by default."""
        memory = self.vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        self.memory_types = [
            (int(memory.memoryTypes[i].propertyFlags), int(memory.memoryTypes[i].heapIndex))
            for i in range(memory.memoryTypeCount)
        ]
        unified = DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT
        # Only a device whose device-local memory is all host-visible counts as unified: a
        # discrete GPU's small BAR window is not where weights belong.
        local_heaps = {h for f, h in self.memory_types if f & DEVICE_LOCAL}
        host_local_heaps = {h for f, h in self.memory_types if f & unified == unified}
        self.unified = bool(host_local_heaps) and local_heaps <= host_local_heaps
        self.device_flags = unified if self.unified else DEVICE_LOCAL

    # ---- memory ----------------------------------------------------------------------------
    def _memory_type(self, bits: int, *choices: int) -> int:
        """The first memory type that `bits` allows with all the flags of the first choice that
        one has."""
        for flags in choices:
            for i, (f, _) in enumerate(self.memory_types):
                if bits >> i & 1 and f & flags == flags:
                    return i
        raise VulkanError(f"no memory type with flags {choices[-1]:#x}")

    def buffer(self, size: int, host: bool = False) -> Buffer:
        """A storage buffer of at least ``size`` bytes: device memory, or host-visible memory
        (mapped) when ``host`` is true or the device's memory is unified."""
        vk = self.vk
        size = max(16, -(-int(size) // 16) * 16)
        usage = STORAGE_BUFFER | TRANSFER_SRC | TRANSFER_DST
        info = vk.VkBufferCreateInfo(size=size, usage=usage, sharingMode=0)
        handle = vk.vkCreateBuffer(self.device, info, None)
        req = vk.vkGetBufferMemoryRequirements(self.device, handle)
        flags = (HOST_VISIBLE | HOST_COHERENT) if host else self.device_flags
        # staging read back from uncached (write-combined) memory is slow: prefer cached
        cached = HOST_CACHED if flags & HOST_VISIBLE else 0
        type_index = self._memory_type(req.memoryTypeBits, flags | cached, flags)
        info = vk.VkMemoryAllocateInfo(allocationSize=req.size, memoryTypeIndex=type_index)
        try:
            memory = vk.vkAllocateMemory(self.device, info, None)
        except (vk.VkError, vk.VkException) as exc:
            vk.vkDestroyBuffer(self.device, handle, None)
            raise MemoryError(f"Vulkan could not allocate {size} bytes: {exc!r}") from exc
        vk.vkBindBufferMemory(self.device, handle, memory, 0)
        view = None
        if flags & HOST_VISIBLE:
            mapped = vk.vkMapMemory(self.device, memory, 0, size, 0)
            view = np.frombuffer(mapped, dtype=np.uint8, count=size)
        cached = bool(self.memory_types[type_index][0] & HOST_CACHED)
        buf = Buffer(handle, size, view, cached)
        # the finalizer holds the runtime, whose own finalizer destroys the logical device: a
        # runtime let go of goes only after every buffer it made (the other order aborts)
        weakref.finalize(buf, _free, vk, self, handle, memory)
        return buf

    def write(self, buf: Buffer, data: np.ndarray, offset: int = 0) -> None:
        """Copy host bytes into a buffer (through staging when it is not mapped)."""
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if buf.host is not None:
            buf.host[offset : offset + raw.size] = raw
            return
        staging = self._staging
        for start in range(0, raw.size, staging.size):
            part = raw[start : start + staging.size]
            staging.host[: part.size] = part
            self.submit_copy(staging, 0, buf, offset + start, part.size)

    def read(self, buf: Buffer, offset: int, size: int) -> np.ndarray:
        if buf.host is not None:
            return buf.host[offset : offset + size].copy()
        staging = self._staging
        out = np.empty(size, np.uint8)
        for start in range(0, size, staging.size):
            n = min(staging.size, size - start)
            self.submit_copy(buf, offset + start, staging, 0, n)
            out[start : start + n] = staging.host[:n]
        return out

    def fill_zero(self, buf: Buffer) -> None:
        if buf.host is not None:
            buf.host[:] = 0
            return
        self._submit_one(lambda cb: self.vk.vkCmdFillBuffer(cb, buf.handle, 0, buf.size, 0))

    @functools.cached_property
    def _staging(self) -> Buffer:
        return self.buffer(STAGING_CHUNK, host=True)

    def submit_copy(self, src: Buffer, src_off: int, dst: Buffer, dst_off: int, n: int) -> None:
        vk = self.vk
        region = vk.VkBufferCopy(srcOffset=src_off, dstOffset=dst_off, size=n)
        self._submit_one(lambda cb: vk.vkCmdCopyBuffer(cb, src.handle, dst.handle, 1, [region]))

    def begin(self, one_time: bool = True) -> Any:
        """A primary command buffer from the pool, begun: for one submission, or (``one_time``
        false) for a compiled graph's, submitted on every run."""
        vk = self.vk
        info = vk.VkCommandBufferAllocateInfo(
            commandPool=self.command_pool, level=0, commandBufferCount=1
        )
        cb = vk.vkAllocateCommandBuffers(self.device, info)[0]
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo(flags=int(one_time)))
        return cb

    def _submit_one(self, record: Callable[[Any], Any]) -> None:
        """Record a one-off command buffer (`record` adds its commands), submit it and wait."""
        vk = self.vk
        cb = self.begin()
        record(cb)
        vk.vkEndCommandBuffer(cb)
        self.run(vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cb]))
        vk.vkFreeCommandBuffers(self.device, self.command_pool, 1, [cb])

    def run(self, submit: Any) -> None:
        """Submit a VkSubmitInfo and wait (a compiled graph's is built once)."""
        vk = self.vk
        vk.vkQueueSubmit(self.queue, 1, [submit], self.fence)
        if self.spin_wait:  # poll: no sleep and wake-up between the GPU's end and ours
            while True:
                try:
                    vk.vkGetFenceStatus(self.device, self.fence)
                    break
                except vk.VkNotReady:
                    pass
        else:
            vk.vkWaitForFences(self.device, 1, [self.fence], vk.VK_TRUE, 0xFFFFFFFFFFFFFFFF)
        vk.vkResetFences(self.device, 1, [self.fence])

    def gelu_table(self) -> Buffer:
        """GELU (tanh form) of every f16 value, as f16, computed once by the numpy reference: the
        eltwise shader looks results up here, as ggml's CPU backend does, instead of evaluating
        tanh with the driver's own precision."""
        if self._gelu is None:
            from llmrt.reference import gelu_tanh

            x = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
            with np.errstate(all="ignore"):
                y = gelu_tanh(x).astype(np.float16)
            self._gelu = self.buffer(y.nbytes)
            self.write(self._gelu, y.view(np.uint16))
        return self._gelu

    # ---- pipelines -------------------------------------------------------------------------
    def pipeline(self, name: str, n_bindings: int, push_size: int, spec: tuple[int, ...] = ()):
        """The compute pipeline of a shader variant with uint specialization constants 0..n-1,
        created on first use and cached."""
        sg = f"{name}_sg"  # the variant on subgroup operations, where the device has them all
        usable = self.subgroups and (self.clustered or sg not in shaders.CLUSTERED)
        if usable and sg in shaders.VARIANTS:
            name = sg
        if (name, spec) in self._pipelines:
            return self._pipelines[name, spec]
        vk, device, compute = self.vk, self.device, self.vk.VK_SHADER_STAGE_COMPUTE_BIT
        if name not in self._modules:
            code = shaders.spirv(name)
            info = vk.VkShaderModuleCreateInfo(codeSize=len(code), pCode=code)
            self._modules[name] = vk.vkCreateShaderModule(device, info, None)
        one = dict(descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=1)
        bindings = [
            vk.VkDescriptorSetLayoutBinding(binding=i, stageFlags=compute, **one)
            for i in range(n_bindings)
        ]
        info = vk.VkDescriptorSetLayoutCreateInfo(bindingCount=n_bindings, pBindings=bindings)
        set_layout = vk.vkCreateDescriptorSetLayout(device, info, None)
        ranges = [vk.VkPushConstantRange(stageFlags=compute, offset=0, size=push_size)]
        info = vk.VkPipelineLayoutCreateInfo(
            setLayoutCount=1, pSetLayouts=[set_layout], pushConstantRangeCount=1,
            pPushConstantRanges=ranges,
        )  # fmt: skip
        layout = vk.vkCreatePipelineLayout(device, info, None)
        spec_info = data = None  # `data` lives until the pipeline is made
        if spec:
            entries = [
                vk.VkSpecializationMapEntry(constantID=i, offset=4 * i, size=4)
                for i in range(len(spec))
            ]
            data = vk.ffi.new("char[]", struct.pack(f"<{len(spec)}I", *spec))
            spec_info = vk.VkSpecializationInfo(
                mapEntryCount=len(spec), pMapEntries=entries, dataSize=4 * len(spec), pData=data
            )
        # the cooperative-matrix shaders' subgroups tile their outputs: all full and of its size
        size = self.coopmat_subgroup if "_coop" in name else None
        required_size = vk.VkPipelineShaderStageRequiredSubgroupSizeCreateInfo
        required = required_size(requiredSubgroupSize=size) if size else None
        stage = vk.VkPipelineShaderStageCreateInfo(
            pNext=required, flags=REQUIRE_FULL_SUBGROUPS if size else 0, stage=compute,
            module=self._modules[name], pName="main", pSpecializationInfo=spec_info,
        )  # fmt: skip
        info = vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)
        handle = vk.vkCreateComputePipelines(device, None, 1, [info], None)[0]
        self._pipelines[name, spec] = Pipeline(handle, layout, set_layout)
        return self._pipelines[name, spec]


def _destroy_device(vk: Any, device: Any) -> None:
    with contextlib.suppress(Exception):
        vk.vkDeviceWaitIdle(device)
        vk.vkDestroyDevice(device, None)


def _free(vk: Any, runtime: Runtime, handle: Any, memory: Any) -> None:
    with contextlib.suppress(Exception):  # at interpreter exit the device may already be gone
        vk.vkDestroyBuffer(runtime.device, handle, None)
        vk.vkFreeMemory(runtime.device, memory, None)
