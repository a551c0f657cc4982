"""Launches for the steps that read no quantized weight and do not attend (kernels/ops.cl):
copy, binary, unary, glu, norm, rope, soft_max, argmax, set_rows, get_rows_f32, mm_act, and the
decode fusions' norm_q8 (a norm that also writes its output as q8 blocks), quant_q8 and rope_qkv
(rope of q and k and both KV-cache writes).

Each builder turns a step's views and params into kernel launches whose arguments are set once.
Elementwise kernels take a work-item per element, the grid rounded up to whole groups; row
kernels (norm, soft_max, argmax) take one work-group per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from llmrt.errors import UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX
from llmrt.lower.steps import Step
from llmrt.lower.view import Storage, View
from llmrt_opencl.lower import q8_layout
from llmrt_opencl.program import Launch, OpenCLProgram

F32, F16 = GGMLType.F32, GGMLType.F16
FILE = "ops.cl"
LOCAL = 256  # work-items per group, at most (common.h's WG_MAX sizes the __local arrays)
MM_TILE = 16  # ops.cl's MM_TILE
MM_TILED_MIN_T = 8  # token rows from which mm_act takes the tiled kernel
# work-items of a row kernel (norm, soft_max, argmax) on a CPU device: PoCL runs a group as loops
# between its barriers, and the barriers' trees cost more than the columns (SmolLM2's 576-wide
# decode rows, a launch: norm_rows 4.6 -> 2.0 us, norm_rows_q8 8.2 -> 5.0 us from 256 work-items
# to 8); a multiple of 8 (norm_q8's q8 blocks)
CPU_ROW = 8
CPU_QUANT = 16  # blocks of 32 a work-group of quant_q8_blocks (a CPU device's quant_q8)
# work-groups sharing a row of a GPU's norm_q8 when the rows are fewer than its compute units (a
# decode step's), at most: each computes the row's divisor and writes its share of the row, as
# CUDA's norm_rows_q8 does, where one work-group made serial passes over it (the 1B's 2048-wide
# norms took 8.3 us a launch on an H100's profiling queue, 2026-12-07). Not yet measured on a
# GPU; 1: a work-group a row
NORM_PARTS = 8


def _i32(x: int) -> np.int32:
    return np.int32(x)


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _local(prog: OpenCLProgram) -> int:
    return max(1, min(LOCAL, int(prog.device_info["max_work_group_size"])))


def _flat(prog: OpenCLProgram, n: int) -> tuple[tuple[int], tuple[int]]:
    """Global and local size for an elementwise kernel over n items (extra items return)."""
    local = _local(prog)
    return (max(1, -(-n // local)) * local,), (local,)


def _row_local(prog: OpenCLProgram, ncols: int) -> int:
    """Work-items for a row kernel: about 4 columns each, 32 to LOCAL, a power of two; CPU_ROW
    on a CPU device."""
    if prog.device_info["cpu"]:
        return CPU_ROW
    want = 1 << max(5, math.ceil(math.log2(max(1, -(-ncols // 4)))))
    return min(_local(prog), want)


def _collapse(shape: tuple[int, ...], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """(size, stride) dimensions with size-1 dimensions dropped and neighbours that step as one
    merged: a strided view of any rank that is 4-D or less in memory."""
    dims = [(d, s) for d, s in zip(shape, strides, strict=True) if d != 1]
    out: list[tuple[int, int]] = []
    for d, s in dims:
        if out and out[-1][1] == s * d:
            out[-1] = (out[-1][0] * d, s)
        else:
            out.append((d, s))
    return out or [(1, 1)]


def copy(prog: OpenCLProgram, step: Step) -> list[Launch]:
    """A strided view gathered into a contiguous one, or (split.py's parts) a contiguous view
    scattered into a strided one."""
    src, out = step.ins[0], step.out
    assert out is not None
    scatter = not out.contiguous
    assert not scatter or src.contiguous, "a copy between two strided views"
    strided = out if scatter else src
    dims = _collapse(strided.shape, strided.strides)
    if len(dims) > 4:
        raise UnsupportedOp(f"copy of a view strided in {len(dims)} dimensions (at most 4)")
    dims = [(1, 0)] * (4 - len(dims)) + dims
    g, loc = _flat(prog, src.n)
    args = (*prog.arg(src), *prog.arg(out), _i64(src.n), _i32(step.params["mode"]),
            *(_i64(d) for d, _ in dims[1:]), *(_i64(s) for _, s in dims),
            _i32(scatter))  # fmt: skip
    return [Launch(prog.kernel(FILE, "copy_strided"), g, loc, args)]


def _broadcast_dims(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[int, int]]:
    """(a's size, b's size) per dimension, b padded on the left, size-1 pairs dropped and
    neighbours that broadcast alike merged."""
    b = (1,) * (len(a) - len(b)) + tuple(b)
    out: list[tuple[int, int]] = []
    for da, db in zip(a, b, strict=True):
        if da == 1:
            continue
        if out and (out[-1][1] == 1) == (db == 1):
            out[-1] = (out[-1][0] * da, out[-1][1] * db)
        else:
            out.append((da, db))
    return out or [(1, 1)]


def binary(prog: OpenCLProgram, step: Step) -> list[Launch]:
    (a, b), out = step.ins, step.out
    assert out is not None
    dims = _broadcast_dims(a.shape, b.shape)
    kind, nb = 2, b.n
    if b.n == a.n:
        kind = 0
    elif dims[-1][1] != 1 and all(db == 1 for _, db in dims[:-1]):
        kind = 1  # a row repeated: index i % nb
    if kind == 2 and len(dims) > 4:
        raise UnsupportedOp(f"broadcast of {b.shape} over {a.shape} needs more than 4 dimensions")
    dims = [(1, 1)] * (4 - len(dims)) + dims if kind == 2 else [(1, 1)] * 4
    g, loc = _flat(prog, a.n)
    args = (*prog.arg(a), *prog.arg(b), *prog.arg(out), _i64(a.n), _i32(step.params["op"]),
            _i32(kind), _i64(nb), *(_i64(da) for da, _ in dims[1:]),
            *(_i64(db) for _, db in dims))  # fmt: skip
    return [Launch(prog.kernel(FILE, "binary"), g, loc, args)]


def unary(prog: OpenCLProgram, step: Step) -> list[Launch]:
    x, out = step.ins[0], step.out
    assert out is not None
    g, loc = _flat(prog, out.n)
    args = (*prog.arg(x), *prog.arg(out), _i64(out.n), _i32(step.params["op"]),
            _f32(step.params.get("scale", 1.0)))  # fmt: skip
    return [Launch(prog.kernel(FILE, "unary"), g, loc, args)]


def glu(prog: OpenCLProgram, step: Step) -> list[Launch]:
    (gate, up), out = step.ins, step.out
    assert out is not None
    g, loc = _flat(prog, out.n)
    args = (*prog.arg(gate), *prog.arg(up), *prog.arg(out), _i64(out.n), _i32(step.params["op"]))
    return [Launch(prog.kernel(FILE, "glu"), g, loc, args)]


def norm(prog: OpenCLProgram, step: Step) -> list[Launch]:
    x, out = step.ins[0], step.out
    assert out is not None
    if out.n == 0:  # no rows: OpenCL 1.2 refuses an empty grid
        return []
    ncols = out.shape[-1]
    rows = out.n // ncols
    w = step.ins[1] if len(step.ins) > 1 else x  # x stands in for no weight (has_w 0)
    local = _row_local(prog, ncols)
    args = (*prog.arg(x), *prog.arg(out), *prog.arg(w), _i32(ncols), _f32(step.params["eps"]),
            _i32(step.params["mode"]), _i32(len(step.ins) > 1))  # fmt: skip
    return [Launch(prog.kernel(FILE, "norm_rows"), (rows * local,), (local,), args)]


def q8_arg(prog: OpenCLProgram, q8: Storage, n: int) -> tuple[Any, np.uint64, np.int64]:
    """A q8 buffer of n activations: its (buffer, byte offset) and where its scales start."""
    buf, offset = prog.base[q8]
    return buf, np.uint64(offset), _i64(q8_layout(n)[0])


def norm_q8(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p, x, out = step.params, step.ins[0], step.out
    assert out is not None
    ncols = out.shape[-1]
    rows = out.n // ncols
    w = step.ins[1] if len(step.ins) > 1 else x  # x stands in for no weight (has_w 0)
    local = _row_local(prog, ncols)
    has_y = not p.get("y_unused", False)
    args = (*prog.arg(x), *prog.arg(out if has_y else x), *prog.arg(w), _i32(ncols),
            _f32(p["eps"]), _i32(p["mode"]), _i32(len(step.ins) > 1), _i32(has_y),
            *q8_arg(prog, p["q8"], out.n))  # fmt: skip
    parts = 1
    if not prog.device_info["cpu"] and rows < prog.device_info["compute_units"]:
        parts = max(1, min(NORM_PARTS, -(-ncols // (4 * local))))
    return [Launch(prog.kernel(FILE, "norm_rows_q8"), (rows * local, parts), (local, 1), args)]


def quant_q8_launch(prog: OpenCLProgram, x: View, q8: Storage) -> Launch:
    """x (contiguous f32, a multiple of 32 elements) into the q8 buffer q8: four values a
    work-item, in groups of a multiple of 8 (a block's eight)."""
    args = (*prog.arg(x), *q8_arg(prog, q8, x.n), _i64(x.n // 32))
    if prog.device_info["cpu"]:  # a work-item per block, no barriers: quant_q8_blocks
        local = CPU_QUANT
        g = (-(-(x.n // 32) // local) * local,)
        return Launch(prog.kernel(FILE, "quant_q8_blocks"), g, (local,), args)
    local = max(8, _local(prog) // 8 * 8)
    g, loc = (-(-x.n // (4 * local)) * local,), (local,)
    return Launch(prog.kernel(FILE, "quant_q8"), g, loc, args)


def quant_q8(prog: OpenCLProgram, step: Step) -> list[Launch]:
    assert step.params["n"] == step.ins[0].n
    return [quant_q8_launch(prog, step.ins[0], step.params["q8"])]


def rope_args(p: dict[str, Any]) -> tuple:
    """A rope's constants as rope_elem (common.h) takes them: n_dims, neox, the float-floats of
    freq_base^(-2 / n_dims) (from float64 here) and freq_scale, attn_factor."""
    n_dims = p["n_dims"]
    return (_i32(n_dims), _i32(p["mode"] == ROPE_NEOX),
            *_ff(float(p["freq_base"]) ** (-2.0 / n_dims)), *_ff(float(p["freq_scale"])),
            _f32(p["attn_factor"]))  # fmt: skip


def rope_qkv(prog: OpenCLProgram, step: Step) -> list[Launch]:
    out = step.out
    assert out is not None
    q, k, v, pos = step.ins[:4]
    kc, vc, ids = step.ins[-3:]
    ff = step.ins[4] if len(step.ins) == 8 else q  # q stands in for no factors (has_ff 0)
    if kc.dtype not in (F32, F16) or vc.dtype not in (F32, F16):
        raise UnsupportedOp(f"rope_qkv into {kc.dtype.name} / {vc.dtype.name} caches")
    _, hq, d = q.shape
    n = q.n + k.n + v.n
    g, loc = _flat(prog, n)
    n_dims, neox, *consts = rope_args(step.params)
    args = (*prog.arg(q), *prog.arg(k), *prog.arg(v), *prog.arg(pos), *prog.arg(ff),
            *prog.arg(out), *prog.arg(kc), *prog.arg(vc), *prog.arg(ids), _i32(hq),
            _i32(k.shape[1]), _i32(d), n_dims, neox, _i32(len(step.ins) == 8), *consts,
            _i64(q.n), _i64(k.n), _i64(v.n), _i32(v.n // ids.n), _i64(kc.strides[0]),
            _i64(vc.strides[0]), _i64(min(kc.shape[0], vc.shape[0])), _i32(kc.dtype == F16),
            _i32(vc.dtype == F16))  # fmt: skip
    if prog.device_info["cpu"] and d <= 256:  # a work-item per token: rope_qkv_rows
        t = q.n // (hq * d)
        return [Launch(prog.kernel(FILE, "rope_qkv_rows"), (t,), None, args)]
    return [Launch(prog.kernel(FILE, "rope_qkv"), g, loc, args)]


def _ff(x: float) -> tuple[np.float32, np.float32]:
    """x as a float-float: its nearest f32 and the f32 of what that leaves."""
    hi = np.float32(x)
    return hi, np.float32(x - float(hi))


def rope(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p, out = step.params, step.out
    assert out is not None
    x, pos = step.ins[0], step.ins[1]
    ff = step.ins[2] if len(step.ins) > 2 else x  # x stands in for no factors (has_ff 0)
    t, h, d = x.shape
    n_dims = p["n_dims"]
    n = t * h * (n_dims // 2 + d - n_dims)
    g, loc = _flat(prog, n)
    # the frequency of pair i is r^i: r from float64 here, the power taken in the kernel
    r = _ff(float(p["freq_base"]) ** (-2.0 / n_dims))
    fs = _ff(float(p["freq_scale"]))
    args = (*prog.arg(x), *prog.arg(pos), *prog.arg(ff), *prog.arg(out), _i32(h), _i32(d),
            _i32(n_dims), _i32(2 if p["mode"] == ROPE_NEOX else 0), _i32(len(step.ins) > 2),
            *r, *fs, _f32(p["attn_factor"]), _i64(n))  # fmt: skip
    return [Launch(prog.kernel(FILE, "rope"), g, loc, args)]


def soft_max(prog: OpenCLProgram, step: Step) -> list[Launch]:
    x, out = step.ins[0], step.out
    assert out is not None
    if out.n == 0:  # no rows: OpenCL 1.2 refuses an empty grid
        return []
    s = x.shape[-1]
    rows = x.n // s
    mask = step.ins[1] if len(step.ins) > 1 else x  # x stands in for no mask (has_mask 0)
    local = _row_local(prog, s)
    args = (*prog.arg(x), *prog.arg(mask), *prog.arg(out), _i32(s), _i32(max(1, mask.n // s)),
            _f32(step.params["scale"]), _i32(len(step.ins) > 1))  # fmt: skip
    return [Launch(prog.kernel(FILE, "soft_max"), (rows * local,), (local,), args)]


def argmax(prog: OpenCLProgram, step: Step) -> list[Launch]:
    x, out = step.ins[0], step.out
    assert out is not None
    if x.n == 0:  # no rows: OpenCL 1.2 refuses an empty grid
        return []
    s = x.shape[-1]
    local = _row_local(prog, s)
    args = (*prog.arg(x), *prog.arg(out), _i32(s))
    return [Launch(prog.kernel(FILE, "argmax"), ((x.n // s) * local,), (local,), args)]


def set_rows(prog: OpenCLProgram, step: Step) -> list[Launch]:
    dst, ids, src = step.ins
    if dst.dtype not in (F32, F16):
        raise UnsupportedOp(f"set_rows into a {dst.dtype.name} cache")
    row = math.prod(src.shape[1:])
    g, loc = _flat(prog, src.n)
    args = (*prog.arg(src), *prog.arg(ids), *prog.arg(dst), _i64(src.n), _i32(row),
            _i64(dst.strides[0]), _i64(dst.shape[0]), _i32(dst.dtype == F16))  # fmt: skip
    return [Launch(prog.kernel(FILE, "set_rows"), g, loc, args)]


def get_rows_f32(prog: OpenCLProgram, step: Step) -> list[Launch]:
    (table, ids), out = step.ins, step.out
    assert out is not None
    if table.dtype not in (F32, F16):
        raise UnsupportedOp(f"get_rows from a {table.dtype.name} activation table")
    g, loc = _flat(prog, out.n)
    args = (*prog.arg(table), *prog.arg(ids), *prog.arg(out), _i64(out.n), _i32(table.shape[1]),
            _i64(table.shape[0]), _i32(table.dtype == F16))  # fmt: skip
    return [Launch(prog.kernel(FILE, "get_rows_f32"), g, loc, args)]


def mm_act(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p, (a, b), out = step.params, step.ins, step.out
    assert out is not None
    if out.n == 0:  # no rows: OpenCL 1.2 refuses an empty grid
        return []
    nb, t, m = p["nb"], p["t"], p["m"]
    args = (*prog.arg(a), _i32(a.dtype == F16), *prog.arg(b), *prog.arg(out), _i32(nb),
            _i32(p["r"]), _i32(t), _i32(m), _i32(p["k"]))  # fmt: skip
    if t >= MM_TILED_MIN_T and _local(prog) >= MM_TILE * MM_TILE:
        tiles = (-(-m // MM_TILE) * MM_TILE, -(-t // MM_TILE) * MM_TILE, nb)
        return [Launch(prog.kernel(FILE, "mm_act_tiled"), tiles, (MM_TILE, MM_TILE, 1), args)]
    g, loc = _flat(prog, out.n)
    return [Launch(prog.kernel(FILE, "mm_act"), g, loc, args)]


# step kind (llmrt.lower.steps) -> its launches
LAUNCHES: dict[str, Callable[[OpenCLProgram, Step], list[Launch]]] = {
    "copy": copy,
    "binary": binary,
    "unary": unary,
    "glu": glu,
    "norm": norm,
    "rope": rope,
    "soft_max": soft_max,
    "argmax": argmax,
    "set_rows": set_rows,
    "get_rows_f32": get_rows_f32,
    "mm_act": mm_act,
    "norm_q8": norm_q8,
    "quant_q8": quant_q8,
    "rope_qkv": rope_qkv,
}
