"""CPU backend and device: the host processor as seen by the kernel (Linux /proc), and the numba
kernels (llmrt_cpu.ops) that run graphs on it, with the numpy reference for what they lack."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmrt import reference
from llmrt.device import (
    Backend,
    Device,
    DeviceInfo,
    DeviceType,
    Executable,
    HostBuffer,
    Probe,
)
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor

# The instruction-set extensions that matter to numeric kernels, as /proc/cpuinfo spells them.
SIMD_FLAGS = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
    "amx_bf16", "asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16",
)  # fmt: skip


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _meminfo() -> tuple[int | None, int | None]:
    """(total, available) bytes of host memory."""
    try:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, None
    except (ValueError, OSError, AttributeError):
        return None, None


class CPUDevice(Device):
    def info(self) -> DeviceInfo:
        cpu = _cpuinfo()
        flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
        total, free = _meminfo()
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:
            usable = os.cpu_count() or 1
        simd = [f for f in SIMD_FLAGS if f in flags]
        return DeviceInfo(
            name=cpu.get("model name") or platform.processor() or platform.machine(),
            type=DeviceType.CPU,
            memory_total=total,
            memory_free=free,
            properties={
                "arch": platform.machine(),
                "cores": os.cpu_count(),
                "cores_usable": usable,
                "simd": simd,
                "numpy": np.__version__,
            },
            summary=f"{usable} cores, {' '.join(simd[-4:]) or 'no SIMD'}, numpy {np.__version__}",
        )

    def supports_op(self, node: Tensor) -> bool:
        return node.op in reference.KERNELS or node.op in (Op.WEIGHT, Op.INPUT, Op.STATE)

    def upload(self, tensor: Any) -> Any:
        """Weights stay in the memory-mapped file: zero-copy views, quantized blocks as they are."""
        return reference.host_weight(tensor)

    def allocate(self, shape: tuple[int, ...], dtype: GGMLType) -> HostBuffer:
        return HostBuffer(self, np.zeros(shape, dtype=reference.NUMPY_TYPES[dtype]))

    def compile(self, graph: Graph, bindings: Mapping[str, Any]) -> Executable:
        return CPUProgram(graph, bindings)


class CPUProgram(reference.ReferenceProgram, Executable):
    """A decode graph as one compiled call (`llmrt_cpu.tape`) where every op has an instruction;
    otherwise the reference's program (steps, liveness) with each step's kernel swapped, once,
    for its numba kernel where `llmrt_cpu.ops` has one."""

    def __init__(self, graph: Graph, bindings: Mapping[str, Any], use_tape: bool = True) -> None:
        super().__init__(graph, bindings)
        self.tape = None
        try:
            from llmrt_cpu import jit, ops, tape
        except ImportError:  # no numba: the reference as it is
            self._apply_threads = lambda n=None: None
            self._governor = lambda: None
            return
        self._apply_threads = jit.apply_threads
        n_tokens = next((t.shape[0] for t in graph.leaves if t.key == "tokens"), 1 << 30)
        self._governor = lambda: jit.governor(n_tokens)
        if use_tape:
            try:
                self.tape = tape.Tape(self)
                return
            except tape.Unsupported:
                pass
        shared = ops.Lowering()
        steps = [
            (i, ops.lower(node, kernel, shared), node, srcs, dead)
            for i, kernel, node, srcs, dead in self.steps
        ]
        steps = ops.fuse_norm_mul(steps, set(self.outputs.values()))
        ops.group_products(steps, self.values, shared)
        self.steps = steps

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        execute = self.tape.run if self.tape is not None else super().run
        governor = self._governor()
        if governor is None:
            self._apply_threads()
            return execute(inputs)
        n = governor.choose()
        self._apply_threads(n)
        start = time.perf_counter()
        result = execute(inputs)
        governor.record(n, time.perf_counter() - start)
        return result


class CPUBackend(Backend):
    name = "cpu"
    # Ties are broken within a device type only: on the host processor, native kernels beat an API
    # that emulates a device there (lavapipe, PoCL), while any GPU still beats the CPU.
    priority = 1000
    is_host = True

    def probe(self) -> Probe:
        try:
            import numba

            kernels = f"numba {numba.__version__}"
        except ImportError:  # a broken install still runs, on the reference kernels
            kernels = "numpy reference (numba missing: pip install numba)"
        return Probe(True, details={"numpy": np.__version__, "kernels": kernels})

    def devices(self) -> Sequence[Device]:
        return [CPUDevice(self, 0)]

    def set_threads(self, n: int | None = None) -> int:
        """`-t/--threads`: the threads the CPU kernels run on (None or < 1: the usable physical
        cores); returns the count set."""
        from llmrt_cpu.jit import set_threads

        return set_threads(n)
