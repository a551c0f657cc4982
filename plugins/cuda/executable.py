"""A graph compiled for one CUDA device: buffers planned, one launch resolved per step, replayed
as a captured CUDA graph.

`CUDAProgram.run` copies the step's inputs into a pinned staging buffer, launches the captured
graph (which starts with the host-to-device copy), copies each output into pinned memory that
the returned array owns, and waits. The first run goes launch by launch (it loads every kernel
and lets cuBLAS set up its workspace); the second captures the launches as a CUDA graph that
later runs replay. `LLMRT_CUDA_SAFE=1`, the backend's one debugging switch, launches one by one
every run, without programmatic dependent launch (docs/gpu-switches.md). Measurements behind
the constants below are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import cupy as cp
import numpy as np

from llmrt.device import HOST_TYPES, Buffer, Device, Executable, out_of_memory
from llmrt.gguf.constants import GGMLType
from llmrt.lower import Storage, View, plan_arena
from llmrt.lower.arena import input_arrays, place_inputs
from llmrt.lower.args import pack
from llmrt.lower.passes import mmvq_lanes, q8_layout, q8_of, token_rows
from llmrt.lower.steps import ITEMSIZE, Step
from llmrt.lower.view import bound, dims4
from llmrt_cuda import launch as pdl
from llmrt_cuda.lower import FATTN_MMA_DIMS, FATTN_MMA_MIN_T, attention_split, kernel_source, lower

H2D, D2H = 1, 2  # cudaMemcpyKind
# cublasGemmEx's operations, data types, compute type and algorithm
OP_N, OP_T, R_32F, R_16F, COMPUTE_32F, ALGO = 0, 1, 0, 2, 68, -1
SMEM_DEFAULT = 48 * 1024
MAX_BLOCKS = 65535 * 8
SAFE = os.environ.get("LLMRT_CUDA_SAFE", "0") == "1"
# mat-vec: rows per warp (each x chunk is read once for them), for matrices of at least this many
MMV_ROWS = 2
MMV_ROWS_MIN_M = 1024
# integer mat-vec: two rows per lane group once the launch covers this many rows (1B), else one (8B)
MMVQ_R2_MIN_M = 4096
MMVQ_R2_MAX_K = 4096
# integer mat-vecs reading at most this many weight bytes ask L2 for them before waiting on the
# previous kernel (programmatic dependent launch): pays on small matrices, costs on large ones
MMVQ_PREFETCH_MAX = 4 << 20
# decode attention splits the KV length when (heads x tokens) blocks would not fill the GPU
FATTN_SPLIT_MAX_BLOCKS = 264


@functools.cache
def _sm_count() -> int:
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def _compute_capability() -> int:
    return int(cp.cuda.Device().compute_capability)


def _resident(fn: Any, smem: int) -> int:
    """Blocks of 256 threads of `fn`, each with `smem` bytes of dynamic shared memory, that one
    multiprocessor holds at once (registers go to a warp in 256s; 1 KiB of shared memory a block
    is the system's)."""
    a = cp.cuda.Device().attributes
    regs = -(-max(fn.num_regs, 1) // 8) * 8 * 256
    return max(1, min(a["MaxRegistersPerMultiprocessor"] // regs,
                      a["MaxSharedMemoryPerMultiprocessor"] // (smem + fn.shared_size_bytes + 1024),
                      a["MaxThreadsPerMultiProcessor"] // 256))  # fmt: skip


@functools.cache
def _module(module: str) -> cp.RawModule:
    return cp.RawModule(code=kernel_source(module))


@functools.cache
def kernel(module: str, name: str) -> Any:
    return _module(module).get_function(name)


class CudaTensor(Buffer):
    """A tensor in one GPU's memory, a cupy array: a state (a KV cache), or a program's output."""

    def __init__(self, dev: Device, array: cp.ndarray, dtype: GGMLType) -> None:
        super().__init__(dev, array.shape, dtype)
        self.array = array

    @property
    def data(self) -> cp.cuda.MemoryPointer:
        """Its memory, as a cupy array's (`.data.ptr`: what a launch reads a state by)."""
        return self.array.data

    def write(self, data: Any) -> None:
        with cp.cuda.Device(self.device.index):
            self.array.set(self.as_host(data))

    def read(self) -> np.ndarray:
        with cp.cuda.Device(self.device.index):
            return self.array.get()

    def copy_from(self, src: Buffer) -> bool:
        """From any GPU's memory: cupy copies between two devices peer to peer."""
        if not isinstance(src, CudaTensor):
            return False
        with cp.cuda.Device(self.device.index):
            stream = cp.cuda.Stream(non_blocking=True)
            self.array.data.copy_from_device_async(src.array.data, self.nbytes, stream)
            stream.synchronize()
        return True


def _pinned(v: View) -> np.ndarray:
    """A host array of `v`'s shape and type in pinned memory, which the array keeps alive."""
    dtype = HOST_TYPES[v.dtype]
    pinned = cp.cuda.alloc_pinned_memory(max(v.n * np.dtype(dtype).itemsize, 1))
    return np.frombuffer(pinned, dtype, v.n).reshape(v.shape)


def alloc(nbytes: int, what: str, device_id: str) -> cp.ndarray:
    try:
        return cp.empty(max(int(nbytes), 1), dtype=cp.uint8)
    except cp.cuda.memory.OutOfMemoryError as exc:
        free, _ = cp.cuda.runtime.memGetInfo()
        raise out_of_memory(device_id, what, nbytes, f", {free / 2**20:.1f} MiB free") from exc


@dataclass
class KernelLaunch:
    """One kernel launch resolved at compile time, replayed on the current stream."""

    fn: Any  # a cupy RawKernel
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple
    smem: int = 0

    def __post_init__(self) -> None:  # past 48 KiB a kernel must opt in to more shared memory
        if self.smem > SMEM_DEFAULT:
            self.fn.max_dynamic_shared_size_bytes = self.smem

    def __call__(self, stream_ptr: int) -> None:
        self.fn(self.grid, self.block, self.args, shared_mem=self.smem)


@dataclass
class Gemm:
    """cuBLAS's Y^T[m, t] = W[m, k]^T-op x X^T on f16 copies of W and X (that `dequant` and
    `to_f16` make), f32 out and compute. No residual: supports() fuses one only into mat-vecs."""

    dequant: KernelLaunch
    to_f16: KernelLaunch
    mtk: tuple[int, int, int]
    w16: int
    x16: int
    y: int

    def __call__(self, stream_ptr: int) -> None:
        from cupy_backends.cuda.libs import cublas

        self.dequant(stream_ptr)
        self.to_f16(stream_ptr)
        (m, t, k), one, zero = self.mtk, np.array(1.0, np.float32), np.array(0.0, np.float32)
        w, x, y = (self.w16, R_16F, k), (self.x16, R_16F, k), (self.y, R_32F, m)
        alpha, beta, handle = one.ctypes.data, zero.ctypes.data, cp.cuda.device.get_cublas_handle()
        cublas.gemmEx(handle, OP_T, OP_N, m, t, k, alpha, *w, *x, beta, *y, COMPUTE_32F, ALGO)


class CUDAProgram(Executable):
    def __init__(self, device: Any, graph: Any, bindings: Mapping[str, Any]) -> None:
        self.device, self.device_id, self.index = device, device.id, device.index
        with cp.cuda.Device(self.index):
            self.plan = plan = lower(graph, int8_mma=_compute_capability() >= 80)
            what = f"graph {graph.name!r}"
            self.arena = alloc(plan_arena(plan.storages), f"{what} activations", self.device_id)
            n_in = place_inputs(plan.storages)  # the inputs, one after another in one buffer
            self.inputs_dev = alloc(n_in, f"{what} inputs", self.device_id)
            self.base: dict[Storage, int] = {}
            for s in plan.storages:
                if s.kind in ("weight", "state"):
                    # a weight's cupy array (Device.upload), or a state's CudaTensor
                    self.base[s] = bound(s, bindings, graph).data.ptr
                else:  # an input in the inputs' buffer, or activations in the arena
                    buf = self.inputs_dev if s.kind == "input" else self.arena
                    self.base[s] = buf.data.ptr + max(s.offset, 0)
            # the inputs' pinned host copy, copied in whole by the graph's first launch
            pinned = np.frombuffer(cp.cuda.alloc_pinned_memory(max(n_in, 1)), np.uint8)
            self.keep: list[Any] = [self.arena, self.inputs_dev, pinned]
            self.host_inputs = input_arrays(pinned, plan.inputs)
            copy_in = (self.inputs_dev.data.ptr, pinned.ctypes.data, n_in, H2D)
            copies_in = [functools.partial(cp.cuda.runtime.memcpyAsync, *copy_in)] if n_in else []
            launches = [LAUNCHES[step.op](self, step) for step in plan.steps]  # lower's kinds only
            self.plain_launches = plain = copies_in + launches
            self.pdl = not SAFE and pdl.available(_compute_capability())
            self.launches = [
                pdl.DependentLaunch(x.fn, x.grid, x.block, x.args, x.smem)
                if self.pdl and isinstance(x, KernelLaunch)
                else x
                for x in plain
            ]
            self.stream = cp.cuda.Stream(non_blocking=True)
            self.graph: Any = None
            self.runs = 0
            self.use_graphs = not SAFE

    def ptr(self, v: View) -> int:
        return self.base[v.storage] + v.offset * ITEMSIZE.get(v.dtype, 4)

    def args(self, fmt: str, *values: View | Storage | float) -> tuple:
        """Kernel arguments of `fmt`'s types (llmrt.lower.args)."""
        return pack(fmt, *map(self.value, values))

    def value(self, x: View | Storage | float) -> float:
        """A view or a storage as its device address; a number as it is (0: no operand)."""
        if isinstance(x, View):
            return self.ptr(x)
        return self.base[x] if isinstance(x, Storage) else x

    def _launch_all(self) -> None:
        for launch in self.launches:
            launch(self.stream.ptr)

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        self.write_inputs(inputs)
        with cp.cuda.Device(self.index), self.stream:
            if self.graph is None and self.use_graphs and self.runs >= 1:
                self._capture()
            if self.graph is not None:
                self.graph.launch(self.stream)
            else:
                self._launch_all()
            # each output is copied into pinned memory of its own from cupy's pool, which the
            # returned array keeps: no host-side copy of the logits (500 KB for a 128k vocab)
            results = {}
            for name, v in self.plan.outputs.items():
                if outputs is None or name in outputs:
                    results[name] = host = _pinned(v)
                    copy_out = (host.ctypes.data, self.ptr(v), host.nbytes, D2H, self.stream.ptr)
                    cp.cuda.runtime.memcpyAsync(*copy_out)
            self.stream.synchronize()
        self.runs += 1
        return results

    def output_buffer(self, name: str) -> Buffer | None:
        """An output in the activations' arena, as a cupy array over it."""
        v = self.plan.outputs.get(name)
        if v is None or not v.contiguous or v.storage.kind != "arena":
            return None
        at = self.ptr(v) - self.arena.data.ptr
        array = cp.ndarray(v.shape, HOST_TYPES[v.dtype], memptr=self.arena.data + at)
        return CudaTensor(self.device, array, v.dtype)

    def _capture(self) -> None:
        try:
            self.stream.begin_capture()
            try:
                self._launch_all()
            finally:
                graph = self.stream.end_capture()
        except Exception as exc:  # capture unsupported here: plain launches, then one by one
            if os.environ.get("LLMRT_DEBUG"):
                print(f"llmrt_cuda: CUDA graph capture failed ({exc})")
            if self.pdl:
                self.pdl, self.launches = False, self.plain_launches
                return self._capture()
            self.use_graphs = False
            return
        self.graph = graph


# --- launches: one function per step kind (lower.py), named after it --------------------------
def _flat(name: str, n: int, args: tuple, module: str = "ops") -> KernelLaunch:
    """A grid-stride kernel over `n` items: blocks of 256 threads, at most MAX_BLOCKS of them."""
    blocks = max(1, min(MAX_BLOCKS, -(-n // 256)))
    return KernelLaunch(kernel(module, name), (blocks,), (256,), args)


def _three(xs: list) -> list:
    """A merged product's weights, outputs or rows padded to the kernels' three (0: none)."""
    return [*xs, *[0] * (3 - len(xs))]


def copy(prog: CUDAProgram, st: Step) -> KernelLaunch:
    src = st.ins[0]
    shape, strides = dims4(src.shape, 1), dims4(src.strides, 0)
    args = prog.args("QQqi7q", src, st.out, src.n, st.params["mode"], *shape[1:], *strides)
    return _flat("copy_strided", src.n, args)


def binary(prog: CUDAProgram, st: Step) -> KernelLaunch:
    a, b = st.ins
    ad, bd = dims4(a.shape, 1), dims4(b.shape, 1)
    args = prog.args("3Qqi7q", a, b, st.out, a.n, st.params["op"], *ad[1:], *bd)
    return _flat("binary", a.n, args)


def unary(prog: CUDAProgram, st: Step) -> KernelLaunch:
    p, out = st.params, st.out
    return _flat("unary", out.n, prog.args("2Qqif", st.ins[0], out, out.n, p["op"], p["scale"]))


def glu(prog: CUDAProgram, st: Step) -> KernelLaunch:
    out = st.out
    return _flat("glu", out.n, prog.args("3Qqi", *st.ins[:2], out, out.n, st.params["op"]))


def norm(prog: CUDAProgram, st: Step) -> KernelLaunch:
    """A norm step's rows (norm_rows), or a norm_q8 step's, also written as q8 blocks (and as
    f32 rows unless nothing reads them: `y_unused`)."""
    p, ins, out = st.params, st.ins, st.out
    ncols = out.shape[-1]
    # a warp per 32 columns (one q8 block each), 128 to 1024 threads (BENCHMARKS.md)
    block = min(1024, max(128, 32 * -(-ncols // 32)))
    y = 0 if p.get("y_unused") else out
    w = st.arg(1) or 0
    args = prog.args("3Qidi", ins[0], y, w, ncols, p["eps"], p["mode"])
    if st.op == "norm":
        return KernelLaunch(kernel("ops", "norm_rows"), (out.n // ncols,), (block,), args)
    parts = max(1, (ncols // 32) // (block // 32))
    args += prog.args("Qq", *q8_of(st, out.n))
    return KernelLaunch(kernel("ops", "norm_rows_q8"), (out.n // ncols, parts), (block,), args)


def _rope(p: Mapping[str, Any]) -> tuple:
    """A rope's parameters as its kernels take them ("2i3d")."""
    return p["n_dims"], p["mode"], p["freq_base"], p["freq_scale"], p["attn_factor"]


def rope(prog: CUDAProgram, st: Step) -> KernelLaunch:
    x, pos = st.ins[:2]
    ff = st.arg(2) or 0
    args = prog.args("4Q4i3dq", x, pos, ff, st.out, *x.shape[1:], *_rope(st.params), x.n)
    return _flat("rope", x.n, args)


def set_rows(prog: CUDAProgram, st: Step) -> KernelLaunch:
    dst, ids, src = st.ins
    f16 = dst.dtype == GGMLType.F16
    args = prog.args("3Qq2i", src, ids, dst, src.n, math.prod(src.shape[1:]), f16)
    return _flat("set_rows", src.n, args)


def get_rows_f32(prog: CUDAProgram, st: Step) -> KernelLaunch:
    (table, ids), out = st.ins, st.out
    args = prog.args("3Qi", table, ids, out, out.shape[-1])
    return KernelLaunch(kernel("ops", "get_rows_f32"), (out.shape[0],), (256,), args)


def get_rows_w(prog: CUDAProgram, st: Step) -> KernelLaunch:
    (table, ids), out, type_ = st.ins, st.out, st.params["type"]
    k = st.params["shape"][1]
    args = prog.args("Qq2Qi", table, type_.row_nbytes(k), ids, out, k)
    return KernelLaunch(kernel(str(int(type_)), "get_rows_w"), (out.shape[0],), (128,), args)


def soft_max(prog: CUDAProgram, st: Step) -> KernelLaunch:
    x, s = st.ins[0], st.ins[0].shape[-1]
    mask, t = (st.ins[1], st.ins[1].shape[0]) if len(st.ins) > 1 else (0, 1)
    args = prog.args("3Q2if", x, mask, st.out, s, t, st.params["scale"])
    return KernelLaunch(kernel("ops", "soft_max"), (x.n // s,), (256,), args)


def argmax(prog: CUDAProgram, st: Step) -> KernelLaunch:
    x, s = st.ins[0], st.ins[0].shape[-1]
    args = prog.args("2Qi", x, st.out, s)
    return KernelLaunch(kernel("ops", "argmax"), (x.n // s,), (256,), args)


def mm_act(prog: CUDAProgram, st: Step) -> KernelLaunch:
    (a, b), p, out = st.ins, st.params, st.out
    args = prog.args("Qi2Q", a, a.dtype == GGMLType.F16, b, out)
    args += prog.args("5i", p["nb"], p["r"], p["t"], p["m"], p["k"])
    return _flat("mm_act", out.n, args)


def mmv(prog: CUDAProgram, st: Step) -> KernelLaunch:
    p, ins = st.params, st.ins
    res = st.arg(2) or 0
    nt = token_rows(p["t"])
    r = MMV_ROWS if nt == 1 and p["m"] >= MMV_ROWS_MIN_M else 1
    args = prog.args("Qq3Q3i", ins[0], p["row_bytes"], ins[1], st.out, res, p["m"], p["k"], p["t"])
    fn = kernel(str(int(p["type"])), f"mmv_{nt}_{r}")
    return KernelLaunch(fn, (-(-p["m"] // (4 * r)),), (128,), args)


def quant_q8(prog: CUDAProgram, st: Step) -> KernelLaunch:
    n = st.params["n"]
    args = prog.args("2Q2q", st.ins[0], *q8_of(st, n), n // 32)
    return _flat("quant_q8", n, args)


def rope_qkv(prog: CUDAProgram, st: Step) -> KernelLaunch:
    q, k, v, pos = st.ins[:4]
    ff = st.ins[4] if len(st.ins) == 8 else 0
    kc, vc, ids = st.ins[-3:]
    _, hq, d = q.shape
    f16 = (kc.dtype == GGMLType.F16, vc.dtype == GGMLType.F16)
    args = prog.args("9Q", q, k, v, pos, ff, st.out, kc, vc, ids)
    args += prog.args(
        "5i3d2i3qi", hq, k.shape[1], d, *_rope(st.params), *f16, q.n, k.n, v.n, v.n // ids.n
    )
    return _flat("rope_qkv", q.n + k.n + v.n, args)


def fattn(prog: CUDAProgram, st: Step) -> KernelLaunch:
    p, ins, out = st.params, st.ins, st.out
    q, k, v = ins[:3]
    n_attn = p.get("nr", len(ins))  # ins past this: a new row to rope and store
    mask = ins[3] if n_attn > 3 else 0
    t, hq, d = q.shape
    s, hkv, _ = k.shape
    f16 = 1 if k.dtype == GGMLType.F16 else 0
    q8 = p.get("q8", 0)
    dso = q8_layout(out.n)[0] if q8 else 0

    def resident(heads: int, smem: int) -> int:
        return _resident(kernel("ops", f"fattn_split_{d}_{f16}_{heads}"), smem)

    strides = prog.args("4q2f", *k.strides[:2], *v.strides[:2], p["scale"], p["softcap"])
    prompt = t >= FATTN_MMA_MIN_T and f16 and not q8 and "nr" not in p
    if prompt and d in FATTN_MMA_DIMS and _compute_capability() >= 80:
        args = prog.args("5Q4i", q, k, v, mask, out, t, hq, hkv, s) + strides
        return KernelLaunch(kernel("ops", f"fattn_mma_{d}"), (-(-t // 64), hq), (128,), args)
    nh, nsplit, smem = attention_split(s, hq, hkv, t, d, _sm_count(), resident)
    args = prog.args("5Q3i", q, k, v, mask, out, hq, hkv, s) + strides
    if "nr" not in p and (t > 1 or hq >= FATTN_SPLIT_MAX_BLOCKS or nsplit == 1):
        args += prog.args("Qq", q8, dso)
        smem = (d + s + 256 * 8) * 4
        return KernelLaunch(kernel("ops", f"fattn_{d}_{f16}"), (hq, t), (256,), args, smem)
    part = cp.empty(t * hq * nsplit * (2 * d + 2), dtype=cp.float32)
    counter = cp.zeros(t * hq, dtype=cp.int32)
    prog.keep += [part, counter]
    args += prog.args("2QiQq", part.data.ptr, counter.data.ptr, nsplit, q8, dso)
    if "nr" in p:
        kn, vn, pos, ids, kc, vc, *ff = ins[n_attn:]
        args += prog.args("7Q2i3d", kn, vn, pos, ff[0] if ff else 0, ids, kc, vc, *_rope(p["rope"]))
    else:
        args += pack("7Q2i3d", *[0] * 12)
    fn = kernel("ops", f"fattn_split_{d}_{f16}_{nh}")
    return KernelLaunch(fn, (hq // nh, t, nsplit), (256,), args, smem)


def mmvq(prog: CUDAProgram, st: Step) -> KernelLaunch:
    """Integer mat-vecs on q8 activations: one, up to three over one input (`outs`), or gate
    and up with their GLU (`glu`); a single one may add a residual."""
    p = st.params
    t, k = p["t"], p["k"]
    merged = "outs" in p or "glu" in p
    ws = st.ins if merged else st.ins[:1]
    res = st.ins[1] if not merged and len(st.ins) > 1 else 0
    outs, ms = p.get("outs", [st.out]), p.get("ms", [p["m"]])
    glu = p.get("glu", -1)
    nt = token_rows(t)
    g = mmvq_lanes(k // 32) if nt == 1 else 32
    r = 2 if glu >= 0 or (sum(ms) >= MMVQ_R2_MIN_M and k < MMVQ_R2_MAX_K) else 1
    rpb = 4 * (32 // g) * (1 if glu >= 0 else r)
    blocks = -(-ms[0] // rpb) if glu >= 0 else sum(-(-m // rpb) for m in ms)
    prefetch = sum(ms) * (2 if glu >= 0 else 1) * p["row_bytes"] <= MMVQ_PREFETCH_MAX
    args = prog.args("3QqQq", *_three(ws), p["row_bytes"], *q8_of(st, t * k))
    args += prog.args("4Q7i", *_three(outs), res, *_three(ms), k, t, glu, prefetch)
    return KernelLaunch(kernel(str(int(p["type"])), f"mmvq_{nt}_{r}_{g}"), (blocks,), (128,), args)


def gemm(prog: CUDAProgram, st: Step) -> Gemm:
    p, (w, x), out = st.params, st.ins[:2], st.out
    m, k, t = p["m"], p["k"], p["t"]
    w16, x16 = st.temps
    wtype = str(int(p["type"]))
    args = prog.args("QqQ2i", w, p["row_bytes"], w16, m, k)
    dequant = _flat("dequant_f16", m * (k // 32), args, wtype)
    to_f16 = _flat("x_to_f16", t * k, prog.args("2Qq", x, x16, t * k), wtype)
    return Gemm(dequant, to_f16, (m, t, k), *map(prog.value, (w16, x16, out)))


def gemmq(prog: CUDAProgram, st: Step) -> KernelLaunch:
    """Prompt products on int8 tensor cores, 64 x 64 tiles of rows x tokens (weights.cu): one,
    or up to three over one input (`outs`)."""
    p = st.params
    k, t = p["k"], p["t"]
    outs, ms = p.get("outs", [st.out]), p.get("ms", [p["m"]])
    args = prog.args("3QqQq", *_three(st.ins), p["row_bytes"], *q8_of(st, t * k))
    args += prog.args("3Q5i", *_three(outs), *_three(ms), k, t)
    blocks = sum(-(-m // 64) for m in ms)
    return KernelLaunch(kernel(str(int(p["type"])), "gemmq"), (blocks, -(-t // 64)), (128,), args)


LAUNCHES: dict[str, Callable[[CUDAProgram, Step], KernelLaunch | Gemm]] = {
    f.__name__: f
    for f in (
        *(copy, binary, unary, glu, norm, rope, set_rows, get_rows_f32, soft_max, argmax),
        *(mm_act, fattn, get_rows_w, mmv, gemm, gemmq, quant_q8, mmvq, rope_qkv),
    )
} | {"norm_q8": norm}
