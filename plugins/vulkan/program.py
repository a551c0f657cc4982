"""A graph compiled for one Vulkan device, and replayed: ``VulkanProgram``.

The graph is lowered once to steps (lower.py, on llmrt.lower), each step to its dispatches
(launch.py), the activations placed in one arena. Then descriptor sets are written once, and the
whole graph is recorded into one command buffer, a barrier going between two dispatches only
where the second touches memory that one since the last barrier wrote (or writes memory one
read). ``run`` copies the inputs in, submits that command buffer, waits, and reads the outputs
(from cached host memory: ``_plan_outputs``): no Vulkan object is made per step.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrt import device
from llmrt.device import Device, Executable, HostBuffer
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph
from llmrt.lower import Arena, Storage, View, bound, plan_arena
from llmrt.lower.arena import input_arrays, place_inputs
from llmrt.lower.steps import ITEMSIZE
from llmrt.lower.view import host_array
from llmrt_vulkan.launch import LAUNCHES
from llmrt_vulkan.lower import lower
from llmrt_vulkan.runtime import Buffer, Runtime

COMPUTE, TRANSFER, HOST = 0x800, 0x1000, 0x4000  # pipeline stages
SHADER_READ, SHADER_WRITE = 0x20, 0x40  # access kinds
TRANSFER_READ, TRANSFER_WRITE, HOST_READ = 0x800, 0x1000, 0x2000


@dataclass
class VulkanWeight:
    """A weight on the device, in its ggml blocks."""

    buf: Buffer


class VulkanState(device.Buffer):
    """A tensor in a runtime buffer of its own: a state (a KV cache), made by ``allocate``."""

    def __init__(self, dev: device.Device, rt: Runtime, buf: Buffer, shape: tuple[int, ...],
                 dtype: GGMLType) -> None:  # fmt: skip
        super().__init__(dev, shape, dtype)
        self.rt, self.buf = rt, buf

    def write(self, data: Any) -> None:
        self.rt.write(self.buf, self.as_host(data))

    def read(self) -> np.ndarray:
        return self.rt.read(self.buf, 0, self.nbytes).view(self.host_dtype).reshape(self.shape)

    def copy_from(self, src: device.Buffer) -> bool:
        if not isinstance(src, VulkanState) or src.rt is not self.rt:
            return False
        self.rt.submit_copy(src.buf, 0, self.buf, 0, self.nbytes)
        return True


class VulkanProgram(Executable):
    def __init__(self, rt: Runtime, graph: Graph, bindings: Mapping[str, Any],
                 device: Device | None = None) -> None:  # fmt: skip
        self.rt, self.device = rt, device
        plan = lower(graph, rt.cpu, rt.max_range)
        self.arena_peak = plan_arena(plan.storages)
        self.inputs_size = max(place_inputs(plan.storages), 16)  # one buffer of the inputs
        for s in plan.storages:  # weights and states are bound buffers
            if s.kind in ("weight", "state"):
                buf = bound(s, bindings, graph).buf
                s.kind, s.buf, s.offset, s.nbytes = "buffer", buf, 0, buf.size
            elif s.kind == "input":
                s.kind = "inputs"
        self.inputs, self.outputs = plan.inputs, plan.outputs
        self.constants: list[Buffer] = []  # small tables made at compile time (rope frequencies)
        self.dispatches = [d for step in plan.steps for d in LAUNCHES[step.op](self, step)]
        self._record()

    # ---- what the launches use -----------------------------------------------------------
    def grid(self, n_groups: int) -> tuple[int, int, int]:
        x = max(1, min(n_groups, self.rt.max_groups))
        return x, max(1, -(-n_groups // x)), 1

    def gelu(self) -> Storage:
        table = self.rt.gelu_table()
        return Storage("buffer", table.size, offset=0, buf=table)

    def rope_table(self, p: Mapping[str, Any]) -> Storage:
        """inv_freq[i] = freq_base^(-2i/n_dims) * freq_scale, computed in double precision."""
        half = p["n_dims"] // 2
        inv = p["freq_base"] ** (-np.arange(half, dtype=np.float64) * 2.0 / p["n_dims"])
        table = self.rt.buffer(max(16, half * 4))
        self.rt.write(table, (inv * p["freq_scale"]).astype(np.float32))
        self.constants.append(table)
        return Storage("buffer", table.size, offset=0, buf=table)

    def _buffer_of(self, store: Storage) -> Buffer:
        return {"arena": self.arena, "inputs": self.inputs_dev}.get(store.kind, store.buf)

    def _record(self) -> None:
        rt = self.rt
        staged = not rt.unified
        self.arena = rt.buffer(max(self.arena_peak, 16))
        self.inputs_dev = rt.buffer(self.inputs_size, host=not staged)
        self.inputs_host = rt.buffer(self.inputs_size, host=True) if staged else self.inputs_dev
        self._plan_outputs(staged)
        pipelines = [
            rt.pipeline(d.shader, len(d.bindings), struct.calcsize(d.push_format), d.spec)
            for d in self.dispatches
        ]
        sets = self._descriptor_sets(pipelines)
        self.command_buffer = self._command_buffer(pipelines, sets, staged)
        self.submit = rt.vk.VkSubmitInfo(commandBufferCount=1,
                                         pCommandBuffers=[self.command_buffer])  # fmt: skip
        self.host_inputs = input_arrays(self.inputs_host.host, self.inputs)

    def _plan_outputs(self, staged: bool) -> None:
        """Each output's span is copied into a host buffer at the end, unless it is already in
        cached host memory. Device-local memory that the host can map (a discrete GPU's
        resizable BAR) is uncached: reading logits from it costs milliseconds a step."""
        host = Arena()  # the outputs, one after another in the host buffer
        self.out_plan: list[tuple[View, int]] = [  # view (contiguous), host offset
            (ref, host.alloc(ref.n * ITEMSIZE[ref.dtype])) for ref in self.outputs.values()
        ]
        copy_out = staged or not all(
            self._buffer_of(r.storage).cached for r in self.outputs.values()
        )
        self.outputs_host = self.rt.buffer(max(host.peak, 16), host=True) if copy_out else None
        self.host_outputs: dict[str, np.ndarray] = {}  # where each output is after a run
        for name, (ref, at) in zip(self.outputs, self.out_plan, strict=True):
            if self.outputs_host is not None:
                self.host_outputs[name] = host_array(self.outputs_host.host, at, ref)
            else:  # in its storage, in cached host memory
                at = ref.storage.offset + ref.offset * ITEMSIZE[ref.dtype]
                self.host_outputs[name] = host_array(self._buffer_of(ref.storage).host, at, ref)

    def _descriptor_sets(self, pipelines: list[Any]) -> list[Any]:
        rt, vk, n_sets = self.rt, self.rt.vk, len(self.dispatches)
        storage = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
        n_desc = sum(len(d.bindings) for d in self.dispatches)
        size = vk.VkDescriptorPoolSize(type=storage, descriptorCount=max(1, n_desc))
        info = vk.VkDescriptorPoolCreateInfo(
            maxSets=max(1, n_sets), poolSizeCount=1, pPoolSizes=[size]
        )
        self.pool = vk.vkCreateDescriptorPool(rt.device, info, None)
        if not n_sets:
            return []
        layouts = [p.set_layout for p in pipelines]
        info = vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self.pool, descriptorSetCount=n_sets, pSetLayouts=layouts
        )
        sets = vk.vkAllocateDescriptorSets(rt.device, info)
        writes, one = [], dict(descriptorType=storage, descriptorCount=1)
        for dset, d in zip(sets, self.dispatches, strict=True):
            for j, (store, extra) in enumerate(d.bindings):
                buf = self._buffer_of(store)
                offset = store.offset + extra  # storages start 256-byte aligned
                rng = min(buf.size - offset, rt.max_range)
                info = vk.VkDescriptorBufferInfo(buffer=buf.handle, offset=offset, range=rng)
                writes.append(
                    vk.VkWriteDescriptorSet(dstSet=dset, dstBinding=j, pBufferInfo=[info], **one)
                )
        for start in range(0, len(writes), 512):
            part = writes[start : start + 512]
            vk.vkUpdateDescriptorSets(rt.device, len(part), part, 0, None)
        return sets

    def _command_buffer(self, pipelines: list[Any], sets: list[Any], staged: bool) -> Any:
        vk = self.rt.vk
        cb = self.rt.begin(one_time=False)

        def barrier(src_stage, dst_stage, src_access, dst_access):
            mb = vk.VkMemoryBarrier(srcAccessMask=src_access, dstAccessMask=dst_access)
            vk.vkCmdPipelineBarrier(cb, src_stage, dst_stage, 0, 1, [mb], 0, None, 0, None)

        if staged and self.inputs:
            region = vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=self.inputs_size)
            vk.vkCmdCopyBuffer(cb, self.inputs_host.handle, self.inputs_dev.handle, 1, [region])
            barrier(TRANSFER, COMPUTE, TRANSFER_WRITE, SHADER_READ)
        self._record_dispatches(cb, pipelines, sets, barrier)
        if self.outputs_host is not None:
            barrier(COMPUTE, TRANSFER, SHADER_WRITE, TRANSFER_READ)
            for ref, host_off in self.out_plan:
                size = ITEMSIZE[ref.dtype]
                region = vk.VkBufferCopy(srcOffset=ref.storage.offset + ref.offset * size,
                                         dstOffset=host_off, size=ref.n * size)  # fmt: skip
                vk.vkCmdCopyBuffer(cb, self._buffer_of(ref.storage).handle,
                                   self.outputs_host.handle, 1, [region])  # fmt: skip
            barrier(TRANSFER, HOST, TRANSFER_WRITE, HOST_READ)
        else:
            barrier(COMPUTE, HOST, SHADER_WRITE, HOST_READ)
        vk.vkEndCommandBuffer(cb)
        return cb

    def _record_dispatches(self, cb: Any, pipelines: list[Any], sets: list[Any], barrier) -> None:
        """Every dispatch, a barrier before one that reads what a dispatch since the last barrier
        wrote, or writes what one read or wrote."""
        pending_r: list[tuple[int, int, int]] = []  # (buffer, start, end) read since a barrier
        pending_w: list[tuple[int, int, int]] = []

        def span(store: Storage) -> tuple[int, int, int]:
            return id(self._buffer_of(store)), store.offset, store.offset + store.nbytes

        def overlaps(a, spans) -> bool:
            return any(a[0] == b[0] and a[1] < b[2] and b[1] < a[2] for b in spans)

        self.n_barriers = 0
        for i, (d, pipe, dset) in enumerate(zip(self.dispatches, pipelines, sets, strict=True)):
            reads = [span(s) for s in d.reads]
            writes = [span(s) for s in d.writes]
            if any(overlaps(r, pending_w) for r in reads) or any(
                overlaps(w, pending_w) or overlaps(w, pending_r) for w in writes
            ):
                barrier(COMPUTE, COMPUTE, SHADER_WRITE, SHADER_READ | SHADER_WRITE)
                self.n_barriers += 1
                pending_r, pending_w = [], []
            pending_r += reads
            pending_w += writes
            self._record_dispatch(cb, i, pipe, dset)

    def _record_dispatch(self, cb: Any, i: int, pipe: Any, dset: Any) -> None:
        """Dispatch ``i``: its pipeline, descriptor set, push constants and workgroups
        (benchmarks/vulkan_profile.py adds a timestamp after each)."""
        vk, d = self.rt.vk, self.dispatches[i]
        vk.vkCmdBindPipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.handle)
        vk.vkCmdBindDescriptorSets(
            cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.layout, 0, 1, [dset], 0, None
        )
        data = struct.pack(d.push_format, *d.push)
        vk.vkCmdPushConstants(cb, pipe.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, len(data),
                              vk.ffi.from_buffer(data))  # fmt: skip
        vk.vkCmdDispatch(cb, *d.groups)

    # ---- the hot path --------------------------------------------------------------------
    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        self.write_inputs(inputs)
        self.rt.run(self.submit)
        return {
            name: host.copy()
            for name, host in self.host_outputs.items()
            if outputs is None or name in outputs
        }

    def output_buffer(self, name: str) -> device.Buffer | None:
        """Where an output is after a run: its copy in host memory, or its storage (cached host
        memory)."""
        host = self.host_outputs.get(name)
        return None if host is None or self.device is None else HostBuffer(self.device, host)
