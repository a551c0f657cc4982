"""A graph compiled for one CUDA device: buffers planned, one launch resolved per step, replayed
as a captured CUDA graph.

`CUDAProgram.run` copies the step's inputs into pinned staging buffers, launches the captured
graph (which starts with the host-to-device copies), copies each output into pinned memory that
the returned array owns, and waits. The first run goes launch by launch (it loads
every kernel and lets cuBLAS set up its workspace); the second captures the launches as a CUDA
graph that later runs replay. `LLMRT_CUDA_SAFE=1`, the backend's one debugging switch, launches
one by one every run, without programmatic dependent launch (docs/gpu-switches.md).
Measurements behind the constants below are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import cupy as cp
import numpy as np

from llmrt.device import Buffer, Device, Executable, HostBuffer
from llmrt.errors import LlmrtError, OutOfDeviceMemory
from llmrt.gguf.constants import GGMLType
from llmrt.lower import Storage, View, plan_arena
from llmrt_cuda import launch as pdl
from llmrt_cuda.lower import ITEMSIZE, Plan, Step, lower, q8_layout

KERNELS = Path(__file__).parent / "kernels"
NUMPY = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32}
H2D, D2H = 1, 2  # cudaMemcpyKind
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
FATTN_SPLIT_KEYS = 64
FATTN_SPLIT_MAX_BLOCKS = 264


@functools.cache
def _sm_count() -> int:
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def _mmvq_lanes(nb: int) -> int:
    """Lanes per row: the group size (32, 16 or 8) that leaves fewest lanes idle."""
    best, eff = 32, 0.0
    for g in (32, 16, 8):
        e = nb / (g * -(-nb // g))
        if e > eff + 1e-9:
            best, eff = g, e
    return best


@functools.cache
def _source(name: str) -> str:
    return (KERNELS / name).read_text()


def _norm_define() -> str:
    """Norms in float64, as the reference computes them."""
    return "#define NORM_F64 1\n"


@functools.cache
def ops_module() -> cp.RawModule:
    return cp.RawModule(code=_norm_define() + _source("common.cuh") + _source("ops.cu"))


@functools.cache
def weight_module(wtype: int) -> cp.RawModule:
    return cp.RawModule(
        code=f"#define WTYPE {wtype}\n"
        + _norm_define()
        + _source("common.cuh")
        + _source("weights.cu")
    )


@functools.cache
def kernel(module: str, name: str) -> Any:
    mod = ops_module() if module == "ops" else weight_module(int(module))
    return mod.get_function(name)


class CudaWeight:
    """A weight on the device in its GGUF blocks (uint8), with its ggml type and shape."""

    def __init__(self, data: cp.ndarray, type_: GGMLType, shape: tuple[int, ...]) -> None:
        self.data, self.type, self.shape = data, type_, tuple(shape)

    @property
    def ptr(self) -> int:
        return self.data.data.ptr


class CudaTensor(Buffer):
    """A tensor in one GPU's memory, a cupy array: a state (a KV cache), or a program's output."""

    def __init__(self, dev: Device, array: cp.ndarray, dtype: GGMLType) -> None:
        super().__init__(dev, array.shape, dtype)
        self.array = array

    @property
    def ptr(self) -> int:
        return self.array.data.ptr

    def write(self, data: Any) -> None:
        with cp.cuda.Device(self.device.index):
            self.array.set(np.ascontiguousarray(data, dtype=self.array.dtype).reshape(self.shape))

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


def alloc(nbytes: int, what: str, device_id: str) -> cp.ndarray:
    try:
        return cp.empty(max(int(nbytes), 1), dtype=cp.uint8)
    except cp.cuda.memory.OutOfMemoryError as exc:
        free, _ = cp.cuda.runtime.memGetInfo()
        raise OutOfDeviceMemory(
            f"out of memory on {device_id}: {what} needs {nbytes / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB free"
        ) from exc


def _u64(x: int) -> np.uint64:
    return np.uint64(x)


def _i32(x: int) -> np.int32:
    return np.int32(x)


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _grid(n: int, block: int = 256) -> tuple[int]:
    return (max(1, min(MAX_BLOCKS, -(-n // block))),)


def _norm_block(ncols: int) -> int:
    """Threads for a norm row: a warp per 32 columns (one q8 block each), 128 to 1024 (wide rows
    were slow with 256 threads: BENCHMARKS.md)."""
    return min(1024, max(128, 32 * -(-ncols // 32)))


def _pad4(dims: tuple[int, ...], fill: int = 1) -> list[int]:
    return [fill] * (4 - len(dims)) + list(dims)


class CUDAProgram(Executable):
    def __init__(self, device: Any, graph: Any, bindings: Mapping[str, Any]) -> None:
        self.device, self.device_id, self.index = device, device.id, device.index
        with cp.cuda.Device(self.index):
            self._build(graph, bindings)

    # --- compile ---------------------------------------------------------------------------
    def _build(self, graph: Any, bindings: Mapping[str, Any]) -> None:
        plan: Plan = lower(graph)
        self.plan = plan
        arena_nbytes = plan_arena(plan.storages)
        self.arena = alloc(arena_nbytes, f"graph {graph.name!r} activations", self.device_id)
        self.keep: list[Any] = [self.arena]
        base: dict[Storage, int] = {}
        self.inputs: list[tuple[str, np.ndarray, tuple[int, ...]]] = []
        copies_in: list[tuple] = []
        for s in plan.storages:
            if s.kind in ("weight", "state"):
                if s.key not in bindings:
                    raise LlmrtError(f"graph {graph.name!r} needs '{s.key}', which is not bound")
                handle = bindings[s.key]
                base[s] = handle.ptr  # a CudaWeight or a CudaTensor
            elif s.kind == "input":
                buf = alloc(s.nbytes, f"input {s.key}", self.device_id)
                self.keep.append(buf)
                base[s] = buf.data.ptr
            else:
                base[s] = self.arena.data.ptr + max(s.offset, 0)
        self.base = base
        for key, v in plan.inputs.items():
            pinned = cp.cuda.alloc_pinned_memory(max(v.n * ITEMSIZE[v.dtype], 1))
            host = np.frombuffer(pinned, NUMPY[v.dtype], v.n)
            self.keep.append(pinned)
            self.inputs.append((key, host, v.shape))
            copies_in.append(("copy", self.ptr(v), host.ctypes.data, host.nbytes, H2D))
        # outputs are copied after the graph, each into pinned memory of its own from cupy's pool
        # that the returned array keeps: no host-side copy of the logits (500 KB for a 128k vocab)
        self.outputs = [
            (name, self.ptr(v), NUMPY[v.dtype], v.n, v.shape) for name, v in plan.outputs.items()
        ]
        plain = copies_in + [self._launch(step) for step in plan.steps]
        self.plain_launches = plain
        self.pdl = not SAFE and pdl.available(int(cp.cuda.Device().compute_capability))
        self.launches = [
            ("pdl", pdl.DependentLaunch(*item[1:])) if self.pdl and item[0] == "kernel" else item
            for item in plain
        ]
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph: Any = None
        self.runs = 0
        self.use_graphs = not SAFE

    def ptr(self, v: View) -> int:
        return self.base[v.storage] + v.offset * ITEMSIZE.get(v.dtype, 4)

    def _launch(self, step: Step) -> tuple:
        launch = LAUNCHES.get(step.op)
        if launch is None:
            raise LlmrtError(f"no CUDA launch for step {step.op}")
        return launch(self, step)

    def _launch_copy(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        src = ins[0]
        shape = _pad4(src.shape)
        strides = _pad4(src.strides, 0)
        return ("kernel", kernel("ops", "copy_strided"), _grid(src.n), (256,), (
            _u64(P(src)), _u64(P(out)), _i64(src.n), _i32(p["mode"]), _i64(shape[1]),
            _i64(shape[2]), _i64(shape[3]), *map(_i64, strides)), 0)  # fmt: skip

    def _launch_binary(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        a, b = ins
        ad, bd = _pad4(a.shape), _pad4(b.shape)
        return ("kernel", kernel("ops", "binary"), _grid(a.n), (256,), (
            _u64(P(a)), _u64(P(b)), _u64(P(out)), _i64(a.n), _i32(p["op"]),
            *map(_i64, ad[1:]), *map(_i64, bd)), 0)  # fmt: skip

    def _launch_unary(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        return ("kernel", kernel("ops", "unary"), _grid(out.n), (256,), (
            _u64(P(ins[0])), _u64(P(out)), _i64(out.n), _i32(p["op"]),
            np.float32(p["scale"])), 0)  # fmt: skip

    def _launch_glu(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        return (
            "kernel",
            kernel("ops", "glu"),
            _grid(out.n),
            (256,),
            (_u64(P(ins[0])), _u64(P(ins[1])), _u64(P(out)), _i64(out.n), _i32(p["op"])),
            0,
        )

    def _launch_norm(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        ncols = out.shape[-1]
        rows = out.n // ncols
        w = P(ins[1]) if len(ins) > 1 else 0
        block = _norm_block(ncols)
        return ("kernel", kernel("ops", "norm_rows"), (rows,), (block,), (
            _u64(P(ins[0])), _u64(P(out)), _u64(w), _i32(ncols), np.float64(p["eps"]),
            _i32(p["mode"])), 0)  # fmt: skip

    def _launch_rope(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        x, pos = ins[0], ins[1]
        ff = P(ins[2]) if len(ins) > 2 else 0
        _, h, d = x.shape
        return ("kernel", kernel("ops", "rope"), _grid(x.n), (256,), (
            _u64(P(x)), _u64(P(pos)), _u64(ff), _u64(P(out)), _i32(h), _i32(d),
            _i32(p["n_dims"]), _i32(p["mode"]), np.float64(p["freq_base"]),
            np.float64(p["freq_scale"]), np.float64(p["attn_factor"]),
            _i64(x.n)), 0)  # fmt: skip

    def _launch_set_rows(self, step: Step) -> tuple:
        ins = step.ins
        P = self.ptr  # noqa: N806
        dst, ids, src = ins
        row = math.prod(src.shape[1:])
        return ("kernel", kernel("ops", "set_rows"), _grid(src.n), (256,), (
            _u64(P(src)), _u64(P(ids)), _u64(P(dst)), _i64(src.n), _i32(row),
            _i32(1 if dst.dtype == GGMLType.F16 else 0)), 0)  # fmt: skip

    def _launch_get_rows_f32(self, step: Step) -> tuple:
        ins, out = step.ins, step.out
        P = self.ptr  # noqa: N806
        table, ids = ins
        k = out.shape[-1]
        return (
            "kernel",
            kernel("ops", "get_rows_f32"),
            (out.shape[0],),
            (256,),
            (_u64(P(table)), _u64(P(ids)), _u64(P(out)), _i32(k)),
            0,
        )

    def _launch_get_rows_w(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        table, ids = ins
        k = p["shape"][1]
        return ("kernel", kernel(str(int(p["type"])), "get_rows_w"), (out.shape[0],), (128,), (
            _u64(P(table)), _i64(p["type"].row_nbytes(k)), _u64(P(ids)), _u64(P(out)),
            _i32(k)), 0)  # fmt: skip

    def _launch_soft_max(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        x = ins[0]
        s = x.shape[-1]
        mask = P(ins[1]) if len(ins) > 1 else 0
        t = ins[1].shape[0] if len(ins) > 1 else 1
        return ("kernel", kernel("ops", "soft_max"), (x.n // s,), (256,), (
            _u64(P(x)), _u64(mask), _u64(P(out)), _i32(s), _i32(t),
            np.float32(p["scale"])), 0)  # fmt: skip

    def _launch_argmax(self, step: Step) -> tuple:
        ins, out = step.ins, step.out
        P = self.ptr  # noqa: N806
        x = ins[0]
        s = x.shape[-1]
        return (
            "kernel",
            kernel("ops", "argmax"),
            (x.n // s,),
            (256,),
            (_u64(P(x)), _u64(P(out)), _i32(s)),
            0,
        )

    def _launch_mm_act(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        a, b = ins
        return ("kernel", kernel("ops", "mm_act"), _grid(out.n), (256,), (
            _u64(P(a)), _i32(1 if a.dtype == GGMLType.F16 else 0), _u64(P(b)), _u64(P(out)),
            _i32(p["nb"]), _i32(p["r"]), _i32(p["t"]), _i32(p["m"]),
            _i32(p["k"])), 0)  # fmt: skip

    def _launch_mmv(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        w, x = ins[0], ins[1]
        res = P(ins[2]) if len(ins) > 2 else 0
        t = p["t"]
        nt = 1 if t == 1 else (2 if t == 2 else (4 if t <= 4 else 8))
        r = MMV_ROWS if nt == 1 and p["m"] >= MMV_ROWS_MIN_M else 1
        rows_per_block = 4 * r
        return ("kernel", kernel(str(int(p["type"])), f"mmv_{nt}_{r}"),
                (-(-p["m"] // rows_per_block),), (128,), (
            _u64(P(w)), _i64(p["row_bytes"]), _u64(P(x)), _u64(P(out)), _u64(res),
            _i32(p["m"]), _i32(p["k"]), _i32(t)), 0)  # fmt: skip

    def _launch_quant_q8(self, step: Step) -> tuple:
        p, ins = step.params, step.ins
        P = self.ptr  # noqa: N806
        n = p["n"]
        dso, _ = q8_layout(n)
        return ("kernel", kernel("ops", "quant_q8"), _grid(n), (256,), (
            _u64(P(ins[0])), _u64(self.base[p["q8"]]), _i64(dso),
            _i64(n // 32)), 0)  # fmt: skip

    def _launch_norm_q8(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        ncols = out.shape[-1]
        rows = out.n // ncols
        w = P(ins[1]) if len(ins) > 1 else 0
        dso, _ = q8_layout(out.n)
        block = _norm_block(ncols)
        y = 0 if p.get("y_unused") else P(out)
        parts = max(1, (ncols // 32) // (block // 32))  # a warp per q8 block
        return ("kernel", kernel("ops", "norm_rows_q8"), (rows, parts), (block,), (
            _u64(P(ins[0])), _u64(y), _u64(w), _i32(ncols), np.float64(p["eps"]),
            _i32(p["mode"]), _u64(self.base[p["q8"]]), _i64(dso)), 0)  # fmt: skip

    def _launch_rope_qkv(self, step: Step) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        q, k, v = ins[0], ins[1], ins[2]
        pos = ins[3]
        ff = P(ins[4]) if len(ins) == 8 else 0
        kc, vc, ids = ins[-3], ins[-2], ins[-1]
        _, hq, d = q.shape
        hk = k.shape[1]
        vrow = v.n // ids.n
        n = q.n + k.n + v.n
        return ("kernel", kernel("ops", "rope_qkv"), _grid(n), (256,), (
            _u64(P(q)), _u64(P(k)), _u64(P(v)), _u64(P(pos)), _u64(ff), _u64(P(out)),
            _u64(P(kc)), _u64(P(vc)), _u64(P(ids)), _i32(hq), _i32(hk), _i32(d),
            _i32(p["n_dims"]), _i32(p["mode"]), np.float64(p["freq_base"]),
            np.float64(p["freq_scale"]), np.float64(p["attn_factor"]),
            _i32(1 if kc.dtype == GGMLType.F16 else 0),
            _i32(1 if vc.dtype == GGMLType.F16 else 0),
            _i64(q.n), _i64(k.n), _i64(v.n), _i32(vrow)), 0)  # fmt: skip

    def _fattn(self, step: Any) -> tuple:
        p, ins, out = step.params, step.ins, step.out
        P = self.ptr  # noqa: N806
        q, k, v = ins[:3]
        n_attn = p.get("nr", len(ins))  # ins past this: a new row to rope and store
        mask = P(ins[3]) if n_attn > 3 else 0
        t, hq, d = q.shape
        s, hkv, _ = k.shape
        f16 = 1 if k.dtype == GGMLType.F16 else 0
        xq = self.base[p["q8"]] if "q8" in p else 0
        dso = q8_layout(out.n)[0] if xq else 0
        # the split kernel's blocks wait for each other: all of them must be resident at once
        cap = max(1, (2 * _sm_count()) // (hq * t))
        nsplit = min(64, -(-s // FATTN_SPLIT_KEYS), cap)
        common = (_u64(P(q)), _u64(P(k)), _u64(P(v)), _u64(mask), _u64(P(out)), _i32(hq),
                  _i32(hkv), _i32(s), _i64(k.strides[0]), _i64(k.strides[1]), _i64(v.strides[0]),
                  _i64(v.strides[1]), np.float32(p["scale"]), np.float32(p["softcap"]))  # fmt: skip
        if "nr" in p:
            kn, vn, pos, ids, kc, vc, *ff = ins[n_attn:]
            r = p["rope"]
            new_row = (*(_u64(P(x)) for x in (kn, vn, pos)), _u64(P(ff[0]) if ff else 0),
                       _u64(P(ids)), _u64(P(kc)), _u64(P(vc)), _i32(r["n_dims"]), _i32(r["mode"]),
                       np.float64(r["freq_base"]), np.float64(r["freq_scale"]),
                       np.float64(r["attn_factor"]))  # fmt: skip
        else:
            new_row = (*[_u64(0)] * 7, _i32(0), _i32(0), *[np.float64(0.0)] * 3)
        if "nr" in p or (t == 1 and hq < FATTN_SPLIT_MAX_BLOCKS and nsplit > 1):
            chunk = -(-s // nsplit)
            fn = kernel("ops", f"fattn_split_{d}_{f16}")
            smem = (d + chunk + 256 * 8 + 2 * d) * 4
            if smem > SMEM_DEFAULT:
                fn.max_dynamic_shared_size_bytes = smem
            part = cp.empty(t * hq * nsplit * (2 * d + 2), dtype=cp.float32)
            counter = cp.zeros(t * hq, dtype=cp.int32)
            self.keep += [part, counter]
            args = (*common, _u64(part.data.ptr), _u64(counter.data.ptr), _i32(nsplit),
                    _u64(xq), _i64(dso), *new_row)  # fmt: skip
            return ("kernel", fn, (hq, t, nsplit), (256,), args, smem)
        fn = kernel("ops", f"fattn_{d}_{f16}")
        smem = (d + s + 256 * 8) * 4
        if smem > SMEM_DEFAULT:
            fn.max_dynamic_shared_size_bytes = smem
        return ("kernel", fn, (hq, t), (256,), (*common, _u64(xq), _i64(dso)), smem)

    def _mmvq(self, step: Any) -> tuple:
        p = step.params
        t, k = p["t"], p["k"]
        ws = step.ins if "outs" in p or "glu" in p else step.ins[:1]
        res = (
            self.ptr(step.ins[1])
            if ("outs" not in p and "glu" not in p and len(step.ins) > 1)
            else 0
        )
        outs = p.get("outs", [step.out])
        ms = p.get("ms", [p["m"]])
        glu = p.get("glu", -1)
        nt = 1 if t == 1 else (2 if t == 2 else (4 if t <= 4 else 8))
        g = _mmvq_lanes(k // 32) if nt == 1 else 32
        r = 2 if glu >= 0 or (sum(ms) >= MMVQ_R2_MIN_M and k < MMVQ_R2_MAX_K) else 1
        per = 1 if glu >= 0 else r
        rpb = 4 * (32 // g) * per
        blocks = -(-ms[0] // rpb) if glu >= 0 else sum(-(-m // rpb) for m in ms)
        wp = [self.ptr(w) for w in ws] + [0] * (3 - len(ws))
        yp = [self.ptr(o) for o in outs] + [0] * (3 - len(outs))
        mm = list(ms) + [0] * (3 - len(ms))
        dso, _ = q8_layout(t * k)
        xq = self.base[p["q8"]]
        prefetch = sum(ms) * (2 if glu >= 0 else 1) * p["row_bytes"] <= MMVQ_PREFETCH_MAX
        return ("kernel", kernel(str(int(p["type"])), f"mmvq_{nt}_{r}_{g}"), (blocks,), (128,), (
            *map(_u64, wp), _i64(p["row_bytes"]), _u64(xq), _i64(dso), *map(_u64, yp),
            _u64(res), *map(_i32, mm), _i32(k), _i32(t), _i32(glu), _i32(prefetch)), 0)  # fmt: skip

    def _gemm_args(self, step: Any) -> tuple:
        p = step.params
        w, x = step.ins[0], step.ins[1]
        w16 = self.base[step.temps[0]]
        x16 = self.base[step.temps[1]]
        m, k, t = p["m"], p["k"], p["t"]
        deq = (kernel(str(int(p["type"])), "dequant_f16"), _grid(m * (k // 32)), (256,), (
            _u64(self.ptr(w)), _i64(p["row_bytes"]), _u64(w16), _i32(m), _i32(k)))  # fmt: skip
        cvt = (kernel(str(int(p["type"])), "x_to_f16"), _grid(t * k), (256,), (
            _u64(self.ptr(x)), _u64(x16), _i64(t * k)))  # fmt: skip
        residual = self.ptr(step.ins[2]) if len(step.ins) > 2 else 0
        return (deq, cvt, w16, x16, self.ptr(step.out), m, k, t, residual, step.out.n)

    # --- run -------------------------------------------------------------------------------
    def _launch_all(self) -> None:
        for item in self.launches:
            self._launch_one(item)

    def _launch_one(self, item: tuple) -> None:
        from cupy_backends.cuda.libs import cublas

        kind = item[0]
        if kind == "pdl":
            item[1](self.stream.ptr)
        elif kind == "kernel":
            _, fn, grid, block, args, smem = item
            fn(grid, block, args, shared_mem=smem)
        elif kind == "copy":
            _, dst, src, n, direction = item
            cp.cuda.runtime.memcpyAsync(dst, src, n, direction, self.stream.ptr)
        else:
            deq, cvt, w16, x16, y, m, k, t, residual, n = item[1]
            deq[0](deq[1], deq[2], deq[3])
            cvt[0](cvt[1], cvt[2], cvt[3])
            handle = cp.cuda.device.get_cublas_handle()
            one = np.array(1.0, np.float32)
            zero = np.array(0.0, np.float32)
            cublas.gemmEx(
                handle,
                1,
                0,
                m,
                t,
                k,
                one.ctypes.data,
                w16,
                2,
                k,
                x16,
                2,
                k,
                zero.ctypes.data,
                y,
                0,
                m,
                68,
                -1,
            )  # Y^T[m, t] = W[m, k]^T-op x X^T: f16 in, f32 out, f32 compute
            if residual:
                kernel("ops", "binary")(
                    _grid(n), (256,), (_u64(y), _u64(residual), _u64(y), _i64(n), _i32(0),
                                       _i64(1), _i64(1), _i64(n), _i64(1), _i64(1), _i64(1),
                                       _i64(n)),
                )  # fmt: skip

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        for key, host, _ in self.inputs:
            if key in inputs:  # else written into its input_buffer
                np.copyto(host, np.asarray(inputs[key]).reshape(-1), casting="unsafe")
        with cp.cuda.Device(self.index), self.stream:
            if self.graph is not None:
                self.graph.launch(self.stream)
            elif self.use_graphs and self.runs >= 1:
                self._capture()
            else:
                self._launch_all()
            results = {}
            for name, src, dtype, n, shape in self.outputs:
                if outputs is not None and name not in outputs:
                    continue
                nbytes = max(n * np.dtype(dtype).itemsize, 1)
                pinned = cp.cuda.alloc_pinned_memory(nbytes)
                cp.cuda.runtime.memcpyAsync(pinned.ptr, src, nbytes, D2H, self.stream.ptr)
                results[name] = np.frombuffer(pinned, dtype, n).reshape(shape)
            self.stream.synchronize()
        self.runs += 1
        return results

    def input_buffer(self, key: str) -> Buffer | None:
        """The pinned host array the graph copies the input from (the copy is in the graph)."""
        for name, host, shape in self.inputs:
            if name == key:
                return HostBuffer(self.device, host.reshape(shape))
        return None

    def output_buffer(self, name: str) -> Buffer | None:
        """An output in the activations' arena, as a cupy array over it."""
        for out, v in self.plan.outputs.items():
            if out == name and v.contiguous and v.storage.kind == "arena":
                at = self.ptr(v) - self.arena.data.ptr
                array = cp.ndarray(v.shape, NUMPY[v.dtype], memptr=self.arena.data + at)
                return CudaTensor(self.device, array, v.dtype)
        return None

    def _capture(self) -> None:
        try:
            self.stream.begin_capture()
            try:
                self._launch_all()
            finally:
                graph = self.stream.end_capture()
            self.graph = graph
        except Exception as exc:  # capture unsupported here: plain launches, then one by one
            if os.environ.get("LLMRT_DEBUG"):
                print(f"llmrt_cuda: CUDA graph capture failed ({exc})")
            self.graph = None
            if self.pdl:
                self.pdl, self.launches = False, self.plain_launches
                return self._capture()
            self.use_graphs = False
            self._launch_all()
            return
        self.graph.launch(self.stream)


# step kind (lower.py) -> the launch it becomes
LAUNCHES: dict[str, Any] = {
    "copy": CUDAProgram._launch_copy,
    "binary": CUDAProgram._launch_binary,
    "unary": CUDAProgram._launch_unary,
    "glu": CUDAProgram._launch_glu,
    "norm": CUDAProgram._launch_norm,
    "rope": CUDAProgram._launch_rope,
    "set_rows": CUDAProgram._launch_set_rows,
    "get_rows_f32": CUDAProgram._launch_get_rows_f32,
    "get_rows_w": CUDAProgram._launch_get_rows_w,
    "soft_max": CUDAProgram._launch_soft_max,
    "argmax": CUDAProgram._launch_argmax,
    "mm_act": CUDAProgram._launch_mm_act,
    "fattn": CUDAProgram._fattn,
    "mmv": CUDAProgram._launch_mmv,
    "gemm": lambda prog, step: ("gemm", prog._gemm_args(step)),
    "quant_q8": CUDAProgram._launch_quant_q8,
    "norm_q8": CUDAProgram._launch_norm_q8,
    "mmvq": CUDAProgram._mmvq,
    "rope_qkv": CUDAProgram._launch_rope_qkv,
}
