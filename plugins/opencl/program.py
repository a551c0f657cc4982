"""A graph compiled for one OpenCL device: buffers planned once, every kernel built and its
arguments set at compile time, a step enqueued on one in-order queue with no host round trip
between kernels (one wait, for the outputs): recorded once into a command buffer where the device
has cl_khr_command_buffer and is a GPU (replay.py; PoCL's replay costs more than its enqueues),
else from one compiled loop on a GPU (replay.CompiledEnqueue), else kernel by kernel.
`LLMRT_OPENCL_SAFE=1`, the backend's one debugging switch, keeps to the kernel-by-kernel enqueue.

Kernels come from plugins/opencl/kernels/*.cl through pyopencl, which keeps the built binaries
on disk per device and driver (its cache). Each step kind's launches are built by a table
(launch_ops.py, launch_weights.py, launch_attention.py); a tensor operand is passed as a buffer
and the byte offset of its first element, except in the kernels a decode step runs most (the
integer mat-vecs, fattn_vec): those take the activations' one buffer (the arena, which holds the
inputs too) and their offsets and sizes in a constant block, as NVIDIA's driver charges host time
for every argument of every enqueue.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from llmrt.device import HOST_TYPES, Buffer, Device, Executable, out_of_memory
from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType
from llmrt.lower import Storage, View, plan_arena
from llmrt.lower.steps import ITEMSIZE, Step
from llmrt.lower.view import bound
from llmrt_opencl import replay
from llmrt_opencl.lower import lower

KERNELS = Path(__file__).parent / "kernels"
# 1: enqueue kernel by kernel, no command buffer
SAFE = os.environ.get("LLMRT_OPENCL_SAFE", "0") == "1"


@dataclass
class Launch:
    kernel: Any  # cl.Kernel, its arguments set once
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: tuple


@dataclass(frozen=True)
class OpenCLWeight:
    """A weight on the device: its GGUF blocks as stored, in one buffer or in `parts` of whole
    rows (the byte where each starts, its buffer) where it is larger than one buffer may be."""

    buf: Any  # cl.Buffer: the first part's
    type: GGMLType
    shape: tuple[int, ...]
    nbytes: int
    parts: tuple[tuple[int, Any], ...] = ()


class OpenCLTensor(Buffer):
    """A tensor `offset` bytes into a cl.Buffer: a state (a KV cache), or where a program takes
    an input or leaves an output."""

    def __init__(self, dev: Device, buf: Any, shape: tuple[int, ...], dtype: GGMLType,
                 offset: int = 0) -> None:  # fmt: skip
        super().__init__(dev, shape, dtype)
        self.buf, self.offset = buf, offset

    def write(self, data: Any) -> None:
        host = np.ascontiguousarray(data, dtype=HOST_TYPES[self.dtype]).reshape(-1)
        cl.enqueue_copy(self.device.queue, self.buf, host, dst_offset=self.offset,
                        is_blocking=True)  # fmt: skip

    def read(self) -> np.ndarray:
        host = np.empty(self.shape, HOST_TYPES[self.dtype])
        cl.enqueue_copy(self.device.queue, host, self.buf, src_offset=self.offset,
                        is_blocking=True)  # fmt: skip
        return host

    def copy_from(self, src: Buffer) -> bool:
        if not isinstance(src, OpenCLTensor) or src.device.context != self.device.context:
            return False
        cl.enqueue_copy(self.device.queue, self.buf, src.buf, byte_count=self.nbytes,
                        src_offset=src.offset, dst_offset=self.offset)  # fmt: skip
        return True


def allocate(ctx: Any, nbytes: int, what: str, device_id: str) -> Any:
    try:
        return cl.Buffer(ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 16))
    except cl.Error as exc:
        raise out_of_memory(device_id, what, nbytes, f" ({exc})") from exc


class _Arena:
    """Where a launch takes the program's arena while its launches are built (the buffer is made
    after them, at its size with their reservations): OpenCLProgram puts the buffer in its
    place."""


ARENA = _Arena()


def _is_buffer(arg: Any) -> bool:
    return arg is ARENA or isinstance(arg, cl.MemoryObjectHolder)


def _aligned(nbytes: int) -> int:
    return -(-int(nbytes) // 256) * 256


@functools.cache
def _launch_table() -> dict[str, Callable[[OpenCLProgram, Step], list[Launch]]]:
    from llmrt_opencl import launch_attention, launch_ops, launch_weights

    return {**launch_ops.LAUNCHES, **launch_weights.LAUNCHES, **launch_attention.LAUNCHES}


class OpenCLProgram(Executable):
    def __init__(self, device: Any, graph: Any, bindings: Mapping[str, Any]) -> None:
        self.device = device
        self.ctx, self.queue = device.context, device.queue
        self.device_info = device.limits
        # with the decode fusions (lower.py), on a GPU and on a CPU device's kernels; a "fused"
        # entry in the device's limits overrides it (the tests run PoCL's unfused steps too)
        # and on a GPU the prompt products of the legacy quants on q8 activations (gemmq), where
        # the device's work-group size and local memory take one of its tiles
        from llmrt_opencl.launch_weights import gemmq_tiles

        fits = gemmq_tiles(self.device_info, GGMLType.Q4_1, 1, 1)
        q8_gemm = not self.device_info["cpu"] and bool(fits)
        plan = lower(graph, fused=bool(self.device_info.get("fused", 1)), q8_gemm=q8_gemm,
                     cpu=bool(self.device_info["cpu"]),
                     max_weight=device.max_weight_part)  # fmt: skip
        self.plan = plan
        # the inputs after the activations, in the same buffer: a kernel then takes all of its
        # activations as one buffer argument (weights.cl's mmvq, attention.cl's fattn_vec)
        end = _aligned(plan_arena(plan.storages))
        inputs_at: dict[Storage, int] = {}
        for s in plan.storages:
            if s.kind == "input":
                inputs_at[s], end = end, end + _aligned(s.nbytes)
        # then what the launch builders reserve (reserve(): counters, fattn_vec's partials): the
        # buffer is made once they are built, so the launches take it as ARENA until then
        self.arena, self.arena_end = ARENA, end
        self.zeroed: list[tuple[int, int]] = []  # (byte, size): reservations zeroed once
        self.keep: list[Any] = []
        self.memo: dict[Any, Any] = {}  # what launch builders share within this program
        self.base: dict[Storage, tuple[Any, int]] = {}
        self.parts: dict[Storage, tuple[tuple[int, Any], ...]] = {}
        for s in plan.storages:
            if s.kind in ("weight", "state"):
                handle = bound(s, bindings, graph)
                self.base[s] = (handle.buf, 0)
                if len(getattr(handle, "parts", ())) > 1:
                    self.parts[s] = handle.parts
            elif s.kind == "input":
                self.base[s] = (self.arena, inputs_at[s])
            else:
                self.base[s] = (self.arena, max(s.offset, 0))
        self.outputs = [(name, v) for name, v in plan.outputs.items()]
        table = _launch_table()
        self.launches: list[Launch] = []
        for step in plan.steps:
            build = table.get(step.op)
            if build is None:
                raise LlmrtError(f"no OpenCL launch for step {step.op}")
            self.launches += build(self, step)
        self._allocate_arena(f"graph {graph.name!r} activations, inputs and scratch")
        for launch in self.launches:
            launch.kernel.set_args(*launch.args)
        # a step's enqueues: on a GPU recorded once into a command buffer where the driver has
        # one, else from a compiled loop (replay.CompiledEnqueue: no Python between kernels);
        # kernel by kernel from Python on a CPU device (PoCL's replay costs more than its
        # enqueues) and when SAFE. An "enqueue" entry in the device's limits ("command_buffer",
        # "compiled" or "python") forces one, for the tests.
        way = self.device_info.get("enqueue")
        if way is None:
            way = "python" if SAFE or self.device_info["cpu"] else "gpu"
        self.recorded: replay.CommandBuffer | None = None
        self.compiled: replay.CompiledEnqueue | None = None
        if way in ("gpu", "command_buffer"):
            self.recorded = replay.record(device.cl_device, self.queue, self.launches)
        if self.recorded is None and way in ("gpu", "compiled"):
            self.compiled = replay.compile_enqueue(self.queue, self.launches)

    # ---- what the launch builders use ------------------------------------------------------
    def arg(self, v: View) -> tuple[Any, np.uint64]:
        buf, offset = self.base[v.storage]
        offset += v.offset * ITEMSIZE.get(v.dtype, 1)
        if v.storage in self.parts:  # a part of a weight's rows (llmrt.lower.split)
            offset, buf = next((offset - start, b) for start, b in
                               reversed(self.parts[v.storage]) if start <= offset)  # fmt: skip
        return buf, np.uint64(offset)

    def kernel(self, file: str, name: str, defines: Mapping[str, int] | None = None) -> Any:
        """A fresh kernel object (its own arguments) of a program built once per defines."""
        return cl.Kernel(self.device.program(file, tuple(sorted((defines or {}).items()))), name)

    def reserve(self, nbytes: int, zeroed: bool = False) -> tuple[Any, np.uint64]:
        """`nbytes` of the arena past the activations and inputs, for this program's launches
        alone (never planned over): a kernel that takes the arena anyway reaches them with no
        buffer argument of their own. `zeroed`: zero before the first run (counters)."""
        at, self.arena_end = self.arena_end, self.arena_end + _aligned(nbytes)
        if zeroed:
            self.zeroed.append((at, nbytes))
        return self.arena, np.uint64(at)

    def _allocate_arena(self, what: str) -> None:
        """The arena's buffer, now that every reservation is made, put in the place of ARENA."""
        self.arena = real = allocate(self.ctx, self.arena_end, what, self.device.id)
        for at, nbytes in self.zeroed:
            cl.enqueue_fill_buffer(self.queue, real, np.uint8(0), at, nbytes)
        self.queue.finish()
        for launch in self.launches:
            launch.args = tuple(real if a is ARENA else a for a in launch.args)
        self.base = {s: (real if b is ARENA else b, at) for s, (b, at) in self.base.items()}
        self.inputs = [(key, *self.base[v.storage], v) for key, v in self.plan.inputs.items()]

    def shared(self, key: Any, nbytes: int, in_arena: bool = True) -> tuple[Any, np.uint64]:
        """At least `nbytes` of scratch (reserved in the arena, or a buffer of its own) for every
        launch that asks by `key`: the launches run one after another on the program's in-order
        queue, so no two of them use it at once (a layer's partial results, every layer)."""
        held = self.memo.get(key)
        if held is None or held[1] < nbytes:
            space = self.reserve(nbytes) if in_arena else self.scratch(nbytes)
            self.memo[key] = held = (space, nbytes)
        return held[0]

    def scratch(self, nbytes: int, what: str = "attention scratch") -> tuple[Any, np.uint64]:
        buf = allocate(self.ctx, nbytes, what, self.device.id)
        self.keep.append(buf)
        return buf, np.uint64(0)

    def packed(self, args: Sequence[Any]) -> tuple[list[Any], Any]:
        """A launch's arguments split into its buffers, in order, and its numbers as a constant
        block of 64-bit words (a float as its bits), for the kernels that read one (weights.cl's
        MMVQ_PARAMS, attention.cl's FATTN_VEC_PARAMS): one buffer argument in place of dozens
        of scalars, each of which NVIDIA's driver charges for on every enqueue."""
        buffers = [a for a in args if _is_buffer(a)]
        words = np.array([int(x.view(np.int32)) if isinstance(x, np.float32) else int(x)
                          for x in args if not _is_buffer(x)], np.int64)  # fmt: skip
        block = cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                          hostbuf=words)  # fmt: skip
        self.keep.append(block)
        return buffers, block

    def counters(self, nbytes: int) -> tuple[Any, np.uint64]:
        """A kernel's atomic counters in the arena, zeroed once before the first run: the kernel
        that counts to the end resets its own, so every later run finds them zero."""
        return self.reserve(nbytes, zeroed=True)

    # ---- the hot path ----------------------------------------------------------------------
    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        q = self.queue
        for key, buf, at, v in self.inputs:
            if key in inputs:  # else written into its input_buffer
                host = np.ascontiguousarray(inputs[key], dtype=HOST_TYPES[v.dtype]).reshape(-1)
                cl.enqueue_copy(q, buf, host, dst_offset=at, is_blocking=False)
        if self.recorded is not None:
            self.recorded.enqueue()
        elif self.compiled is not None:
            self.compiled.enqueue()
        else:
            for launch in self.launches:
                cl.enqueue_nd_range_kernel(q, launch.kernel, launch.global_size, launch.local_size)
        results, events = {}, []
        for name, v in self.outputs:
            if outputs is not None and name not in outputs:
                continue
            host = np.empty(v.n, HOST_TYPES[v.dtype])
            buf, offset = self.arg(v)
            events.append(cl.enqueue_copy(q, host, buf, src_offset=int(offset),
                                          is_blocking=False))  # fmt: skip
            results[name] = host.reshape(v.shape)
        cl.wait_for_events(events) if events else q.finish()
        return results

    def input_buffer(self, key: str) -> Buffer | None:
        for name, buf, at, v in self.inputs:
            if name == key:
                return OpenCLTensor(self.device, buf, v.shape, v.dtype, at)
        return None

    def output_buffer(self, name: str) -> Buffer | None:
        for out, v in self.outputs:
            if out == name and v.contiguous:
                buf, offset = self.arg(v)
                return OpenCLTensor(self.device, buf, v.shape, v.dtype, int(offset))
        return None
