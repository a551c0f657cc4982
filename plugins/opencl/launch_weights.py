"""Launches for the steps that read a weight in its GGUF blocks (kernels/weights.cl, built once
per weight type): get_rows_w, mmv, gemm and the decode fusions' integer mat-vec mmvq.

mmv: one work-group of MMV_WG work-items per few rows; lanes of a row split its 32-element
chunks and sum in local memory, each rounded activation chunk serving R rows (one or two
tokens) or a row serving up to 8 tokens. gemm: tiles of GEMM_M rows x GEMM_T tokens staged in
local memory a chunk at a time. get_rows_w: one work-item per 16 elements of an output row.
On a CPU device (PoCL) both products are mmv_row: a work-item per row and 8 tokens, in vector
types, after one rounding of the activations (unfused, a decode step's legacy types: mmv_row_q8,
four rows a work-item on q8 blocks). mmvq: as mmv, on q8 activations, for one to three matrices
(q, k, v) or a gate and up pair with their GLU; on a CPU device mmvq_cpu, four rows a work-item.
gemmq: a GPU's prompt product of a legacy quant on q8 activations, tiles of integer dot
products in local memory (GEMMQ_TILES, chosen by the device's limits).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyopencl as cl

from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType
from llmrt.lower.passes import mmvq_lanes, q8_layout
from llmrt.lower.steps import Step
from llmrt.lower.view import View
from llmrt_opencl.launch_ops import q8_arg
from llmrt_opencl.lower import Q8_TYPES
from llmrt_opencl.program import Launch, OpenCLProgram

FILE = "weights.cl"
# weights.cl's constants
MMV_WG = 64
MMV_SB_MAX = 1024  # (token, super-block) q8_K scales one mmv work-group keeps in local memory
GEMM_M, GEMM_T, GEMM_WG = 64, 32, 128
GET_ROWS_WG = 64
CPU_WG = 16  # work-items per group of the CPU kernels (PoCL runs a group as a loop)
# mmvq_cpu's (four rows each): smaller groups even out a decode step's small products over the
# threads (SmolLM2's 576-row o/down: 9 groups of 16, 36 of 4; on PoCL 3.10-3.21 -> 2.95-3.07 ms
# a step for those, opencl_profile, interleaved)
CPU_MMVQ_WG = 4
# mmv lane groups take R rows (4 or 2 for one token, 2 for two), rounding each activation
# chunk once for all R, while at least this many work-groups remain to fill the device
MMV_MIN_GROUPS = 128
MMV_ROWS = {1: (4, 2, 1), 2: (2, 1), 4: (1,), 8: (1,)}  # the kernels mmv_<NT>_<R>
MMVQ_WG = 64  # weights.cl's MMVQ_WG; its kernels mmvq_<NT>_<R> have R 1 or 2 for every NT
# lanes sharing a row of mmvq on a GPU (32, 16 or 8; 0: mmvq_lanes' choice, the fewest idle). 32
# ran the 135M's tg128 4 % faster on the H100 with local-memory sums; it moved a 5-token prompt's
# vocabulary mean on PoCL past tests/models/test_logits.py's bound by summation order alone (the
# decode path's KL divergence is level: BENCHMARKS.md, 2026-12-06, tenth session). 0 until
# measured again with warp shuffles
MMVQ_LANES = 0
# the FFN's down projection in the gate/up launch (lower.FFN_DOWN): its columns in groups of this
# many of the GLU's q8 blocks, a row of partials a group, summed by the last (weights.cl's
# FFN_GROUP): fewer groups, a shorter sum at the end; more, more work-groups sharing the rows
FFN_GROUP = 4
K_QUANTS = frozenset({GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})
# CPU kernels that read halves by bit arithmetic (CPU_HALF): PoCL's vload_half is a software
# routine. Only these: the float kernels (mmv_row) built so ran Gemma 3 on PoCL slower (pp64 187
# -> 161, tg32 23.5 -> 21.1 t/s; 2026-12-05), where SmolLM2's Q4_1 decode gained.
CPU_HALF_KERNELS = frozenset({"mmv_row_q8", "mmvq_cpu"})


# Bytes ahead the q8 CPU kernels prefetch each row's weights (x86; -D PREFETCH): a decode step
# streams every weight from memory once, and the hardware prefetchers left the products waiting
# (SmolLM2 on PoCL, ms a token: none 9.6-11.3, 2048 8.1-9.0, 4096 7.2-8.1, 8192 7.2-8.6, 16384
# 7.4-7.5; interleaved runs of 64 tokens)
CPU_PREFETCH = 4096


def _kernel(prog: OpenCLProgram, wtype: GGMLType, name: str) -> object:
    half = {"CPU_HALF": 1, "PREFETCH": CPU_PREFETCH} if name in CPU_HALF_KERNELS else {}
    return prog.kernel(FILE, name, {"WTYPE": int(wtype), **half})


def _shifted(arg: tuple, nbytes: int) -> tuple:
    """A (buffer, byte offset) kernel argument pair moved on by nbytes."""
    buf, offset = arg
    return buf, np.uint64(int(offset) + nbytes)


def _groups(n: int, size: int) -> int:
    return -(-n // size)


def _lanes(n_chunks: int) -> int:
    """Lanes per row: the smallest power of two covering the row's chunks, MMV_WG at most."""
    g = 1
    while g < min(n_chunks, MMV_WG):
        g *= 2
    return g


def _token_tile(t: int) -> int:
    return 1 if t == 1 else 2 if t == 2 else 4 if t <= 4 else 8


def _rows(nt: int, m: int, g: int) -> int:
    """Rows per lane group: the most that still leave MMV_MIN_GROUPS work-groups."""
    for r in MMV_ROWS[nt]:
        if _groups(m, MMV_WG // g * r) >= MMV_MIN_GROUPS:
            return r
    return 1


def _launch_get_rows_w(prog: OpenCLProgram, step: Step) -> list[Launch]:
    table, ids = step.ins
    n_table, k = step.params["shape"][-2:]
    row0, n_rows = step.params.get("rows", (0, n_table))  # a part of the table (split.py)
    wtype = step.params["type"]
    n = ids.n
    items = n * (k // 16)
    args = (*prog.arg(table), np.int64(wtype.row_nbytes(k)), np.int32(n_rows), *prog.arg(ids),
            *prog.arg(step.out), np.int32(k), np.int32(n), np.int32(row0),
            np.int32(n_table))  # fmt: skip
    size = _groups(items, GET_ROWS_WG) * GET_ROWS_WG
    return [Launch(_kernel(prog, wtype, "get_rows_w"), (size,), (GET_ROWS_WG,), args)]


def _residual(prog: OpenCLProgram, step: Step) -> tuple[tuple, np.int32]:
    """The residual's argument pair and flag; without one, the output stands in (never read)."""
    if len(step.ins) > 2:
        return prog.arg(step.ins[2]), np.int32(1)
    return prog.arg(step.out), np.int32(0)


def _rounding(wtype: GGMLType) -> str:
    """How weights of this type round the activations (reference.vec_dot_round)."""
    if wtype in (GGMLType.F16, GGMLType.BF16):
        return wtype.name
    return "q8_K" if wtype in K_QUANTS else "q8_0"


def _launch_mmv_q8_cpu(prog: OpenCLProgram, step: Step) -> list[Launch]:
    """A CPU device's decode step for a legacy type: x as q8 blocks once (ops.cl's
    quant_q8_blocks, shared by the products reading the same value), then two rows a work-item
    (mmv_row_q8)."""
    p = step.params
    wtype, m, k = p["type"], p["m"], p["k"]
    w, x = step.ins[:2]
    (res, has_res), y = _residual(prog, step), prog.arg(step.out)
    launches = []
    dso, nbytes = q8_layout(k)
    key = (id(x.storage), x.offset, x.n, "q8 blocks")
    if key not in prog.memo:
        prog.memo[key] = xq = prog.scratch(nbytes)
        args = (*prog.arg(x), *xq, np.int64(dso), np.int64(k // 32))
        size = _groups(k // 32, CPU_WG) * CPU_WG
        launches.append(Launch(prog.kernel("ops.cl", "quant_q8_blocks"), (size,), (CPU_WG,), args))
    xq = prog.memo[key]
    args = (*prog.arg(w), np.int64(p["row_bytes"]), *xq, np.int64(dso), *y, *res, has_res,
            np.int32(m), np.int32(k))  # fmt: skip
    size = _groups(_groups(m, 4), CPU_WG) * CPU_WG
    launches.append(Launch(_kernel(prog, wtype, "mmv_row_q8"), (size,), (CPU_WG,), args))
    return launches


def _launch_mmv_cpu(prog: OpenCLProgram, step: Step) -> list[Launch]:
    """A CPU device (PoCL), any number of tokens: activations rounded once (round_rows), then a
    work-item per row and 8 tokens; a decode step of a legacy type on q8 blocks instead."""
    p = step.params
    wtype, m, k, t = p["type"], p["m"], p["k"], p["t"]
    if t == 1 and wtype in Q8_TYPES:
        return _launch_mmv_q8_cpu(prog, step)
    w, x = step.ins[:2]
    (res, has_res), y = _residual(prog, step), prog.arg(step.out)
    launches = []
    xr = prog.arg(x)
    if wtype != GGMLType.F32:  # every other weight type rounds the activations first
        # once for the mat-vecs reading one value the same way (q/k/v, gate/up): keyed by the
        # value's storage, which no other value shares
        key = (id(x.storage), x.offset, x.n, _rounding(wtype))
        if key not in prog.memo:
            block = 256 if wtype in K_QUANTS else 32
            prog.memo[key] = xr = prog.scratch(4 * t * k)
            args = (*prog.arg(x), *xr, np.int32(k), np.int32(t))
            size = _groups(t * (k // block), CPU_WG) * CPU_WG
            launches.append(Launch(_kernel(prog, wtype, "round_rows"), (size,), (CPU_WG,), args))
        xr = prog.memo[key]
    args = (*prog.arg(w), np.int64(p["row_bytes"]), *xr, *y, *res, has_res, np.int32(m),
            np.int32(k), np.int32(t))  # fmt: skip
    size = (_groups(m, CPU_WG) * CPU_WG, _groups(t, 8))
    launches.append(Launch(_kernel(prog, wtype, "mmv_row"), size, (CPU_WG, 1), args))
    return launches


def _launch_mmv(prog: OpenCLProgram, step: Step) -> list[Launch]:
    if prog.device_info.get("cpu"):
        return _launch_mmv_cpu(prog, step)
    p = step.params
    wtype, m, k, t = p["type"], p["m"], p["k"], p["t"]
    w, x = step.ins[:2]
    (res, has_res), y = _residual(prog, step), prog.arg(step.out)
    g = _lanes(k // 32)
    # the K-quants' per-(token, super-block) scales bound the tokens of one launch
    per = max(1, MMV_SB_MAX // (k // 256)) if wtype in K_QUANTS else t
    launches = []
    for t0 in range(0, t, per):
        tn = min(per, t - t0)
        nt = _token_tile(tn)
        r = _rows(nt, m, g)
        rows_per_group = (MMV_WG // g) * r
        args = (
            *prog.arg(w), np.int64(p["row_bytes"]), *_shifted(prog.arg(x), 4 * t0 * k),
            *_shifted(y, 4 * t0 * m), *_shifted(res, 4 * t0 * m), has_res,
            np.int32(m), np.int32(k), np.int32(tn), np.int32(g),
        )  # fmt: skip
        size = _groups(m, rows_per_group) * MMV_WG
        launches.append(Launch(_kernel(prog, wtype, f"mmv_{nt}_{r}"), (size,), (MMV_WG,), args))
    return launches


def _launch_gemm(prog: OpenCLProgram, step: Step) -> list[Launch]:
    if prog.device_info.get("cpu"):  # rows times tiles of 8 tokens, in cache: see mmv_row
        return _launch_mmv_cpu(prog, step)
    p = step.params
    wtype, m, k, t = p["type"], p["m"], p["k"], p["t"]
    w, x = step.ins[:2]
    res, has_res = _residual(prog, step)
    args = (*prog.arg(w), np.int64(p["row_bytes"]), *prog.arg(x), *prog.arg(step.out), *res,
            has_res, np.int32(m), np.int32(k), np.int32(t))  # fmt: skip
    size = (_groups(m, GEMM_M) * GEMM_WG, _groups(t, GEMM_T))
    return [Launch(_kernel(prog, wtype, "gemm"), size, (GEMM_WG, 1), args)]


def _launch_mmvq(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p = step.params
    wtype, k, t = p["type"], p["k"], p["t"]
    glu = p.get("glu", -1)
    outs, ms = p.get("outs", [step.out]), p.get("ms", [p["m"]])
    several = "outs" in p or "glu" in p  # ins: the weights; else the weight and a residual
    ws = step.ins if several else step.ins[:1]
    res = step.ins[1] if not several and len(step.ins) > 1 else None
    down = p.get("down")  # the FFN's down projection, taken in (lower.ffn_down): W2 its weight
    if down is not None:
        ws = [*ws, down.ins[0]]
    g = 1 if prog.device_info["cpu"] else MMVQ_LANES or mmvq_lanes(k // 32)
    nt = _token_tile(t)
    if glu >= 0:  # a lane group's two rows: the gate's and the up's
        r, groups = 2, _groups(ms[0], MMVQ_WG // g)
    else:
        two = sum(_groups(m, MMVQ_WG // g * 2) for m in ms) >= MMV_MIN_GROUPS
        r = 2 if two else 1
        groups = sum(_groups(m, MMVQ_WG // g * r) for m in ms)
    w_args = [a for w in [*ws, *[ws[0]] * (3 - len(ws))] for a in prog.arg(w)]
    y_args = [a for y in [*outs, *[outs[0]] * (3 - len(outs))] for a in prog.arg(y)]
    args = (*w_args, np.int64(p["row_bytes"]), *q8_arg(prog, p["q8"], t * k), *y_args,
            *prog.arg(res if res is not None else outs[0]), np.int32(res is not None),
            *(np.int32(m) for m in [*ms, *[0] * (3 - len(ms))]), np.int32(k), np.int32(t),
            np.int32(g), np.int32(glu))  # fmt: skip
    cpu = prog.device_info["cpu"]
    args += _epilogues(prog, step, counted=not cpu)
    if down is not None:
        args += _down_args(prog, step, down)
    if cpu:  # four rows a work-item, no local memory: mmvq_cpu
        items = _groups(ms[0], 2) if glu >= 0 else sum(_groups(m, 4) for m in ms)
        size, local = (_groups(items, CPU_MMVQ_WG) * CPU_MMVQ_WG,), (CPU_MMVQ_WG,)
        if "q8_out" in p:  # a work-item a block of 32 GLU outputs (48 groups: 1536)
            size, local = (outs[0].n // 32,), (1,)
        return [Launch(_kernel(prog, wtype, "mmvq_cpu"), size, local, args)]
    # the weights, the activations' buffer (the counters' too), the norm's weight, the numbers
    buffers, numbers = prog.packed(args)
    (w0, w1, w2, xq), nw, activations = buffers[:4], buffers[10], buffers[4:10] + buffers[11:]
    if len({id(b) for b in (xq, *activations)}) != 1:
        raise LlmrtError("an OpenCL mat-vec's activations are in more than one buffer")
    # weights.cl's MMVQ_EPILOGUE
    epilogue = 3 if down is not None else 1 if "q8_out" in p else 2 if "norm" in p else 0
    # the weights it reads (MMVQ_WBUFS), the norm's weight where an epilogue reads it
    args = (*(w0, w1, w2)[: len(ws)], xq, *([nw] if epilogue >= 2 else []), numbers)
    defines = {"MMVQ_WBUFS": len(ws)} if len(ws) < 3 else {}
    if epilogue:
        defines["MMVQ_EPILOGUE"] = epilogue
    if epilogue == 3:
        defines["FFN_GROUP"] = FFN_GROUP
    kernel = q8_kernel(prog, wtype, f"mmvq_{nt}_{r}", **defines)
    return [Launch(kernel, (groups * MMVQ_WG,), (MMVQ_WG,), args)]


def _down_args(prog: OpenCLProgram, step: Step, down: Step) -> tuple:
    """Epilogue 3's numbers past the others (weights.cl's MMVQ_DOWN_PARAMS): the down
    projection's row bytes and rows, its residual and output row, then its partials (a row a
    group of FFN_GROUP of the GLU's q8 blocks) and counters (one a group, one for the row), in
    the arena."""
    md, groups = down.params["m"], -(-(down.params["k"] // 32) // FFN_GROUP)
    return (np.int64(down.params["row_bytes"]), np.int32(md), *prog.arg(down.ins[1]),
            *prog.arg(down.out), *prog.shared("down partials", 4 * groups * md),
            *prog.counters(4 * groups), *prog.counters(4))  # fmt: skip


def _epilogues(prog: OpenCLProgram, step: Step, counted: bool) -> tuple:
    """The mat-vec kernels' arguments for the steps lower.mat_vec_epilogues gave it: the GLU's q8
    blocks (buffer, offset, scales' offset, on), then its row's norm (counter, weight, has_w, eps,
    mode, has_y, y, q8 buffer, offset, scales' offset, on); its output stands in for unused
    buffers. The atomic counters (zeroed here; the kernel that counts to the end resets them) pick
    the last work-item (mmvq_cpu's norm) or work-group (`counted`: a GPU's) of the row's norm, or
    on a GPU the work-group that completes each q8 block of the GLU's row."""
    p, y = step.params, step.params.get("outs", [step.out])[0]
    off = prog.arg(y)
    oq = (*off, np.int64(0), np.int32(0))
    if "q8_out" in p:
        oq = (*q8_arg(prog, p["q8_out"], y.n), np.int32(1))
    cnt = off
    if "norm" in p or (counted and "q8_out" in p):
        cnt = prog.counters(max(16, 4 * (y.n // 32)) if "q8_out" in p else 16)
    # its own norm, or the down projection's it took in (epilogue 3)
    ns = p["norm"] if "norm" in p else p["down"].params.get("norm") if "down" in p else None
    return (*oq, *cnt, *norm_args(prog, ns, y), np.int32(ns is not None))


def norm_args(prog: OpenCLProgram, ns: Step | None, y: View) -> tuple:
    """The arguments of a norm_q8 step a launch takes after its own work (lower.
    mat_vec_epilogues): its weight, has_w, eps, mode, has_y, its f32 row, its q8 blocks (buffer,
    offset, scales' offset); without one, `y` stands in for the buffers."""
    if ns is None:
        off = prog.arg(y)
        return (*off, np.int32(0), np.float32(0), np.int32(0), np.int32(0), *off, *off,
                np.int64(0))  # fmt: skip
    w, has_y = ns.ins[1] if len(ns.ins) > 1 else y, not ns.params.get("y_unused", False)
    return (*prog.arg(w), np.int32(len(ns.ins) > 1), np.float32(ns.params["eps"]),
            np.int32(ns.params["mode"]), np.int32(has_y), *prog.arg(ns.out if has_y else y),
            *q8_arg(prog, ns.params["q8"], ns.out.n))  # fmt: skip


def q8_kernel(
    prog: OpenCLProgram, wtype: GGMLType, name: str, file: str = FILE, **defines: int
) -> object:
    """An integer product kernel (mmvq, gemmq; in `file`, attention.cl's fattn_vec with ATTN_O)
    with the device's dot products: the builtin of cl_khr_integer_dot_product (USE_IDP;
    EMULATE_IDP, the tests' stand-in for it on PoCL), else NVIDIA's dp4a through inline PTX
    (NV_DP4A; built again without it should the driver refuse the assembly), else int
    multiply-adds."""
    info = prog.device_info
    defines = {"WTYPE": int(wtype), **defines}
    if info.get("integer_dot") or info.get("emulate_idp"):
        defines["USE_IDP"] = 1
        if info.get("emulate_idp"):
            defines["EMULATE_IDP"] = 1
    elif info.get("nv_dp4a"):
        try:
            return prog.kernel(file, name, {**defines, "NV_DP4A": 1})
        except cl.Error:
            pass
    return prog.kernel(file, name, defines)


# gemmq tiles, largest first: (work-items across rows, across tokens, rows and tokens a
# work-item, q8 blocks of K a stage); weights.cl's GQ_RX, GQ_RY, GQ_TM, GQ_TN, GQ_NB
GEMMQ_TILES = ((16, 16, 8, 4, 4), (16, 16, 4, 4, 4), (16, 8, 4, 4, 4), (8, 8, 4, 4, 2))
# a tile of 8 tokens a work-item too, ahead of the others for the types whose blocks carry more
# than levels with an offset (Q4_1, Q5_1: a min; Q8_0: 34 bytes): faster there on an H100, and
# slower for Q4_0 (benchmarks/opencl_gemm.py; BENCHMARKS.md, 2026-12-06)
WIDE_TILE = (16, 16, 8, 8, 4)
# the tile on tensor cores (GQ_MMA): 128 rows x 64 tokens, ahead of every other wherever it fits,
# however few groups it makes. On an H100 (benchmarks/opencl_gemm.py, 2026-12-06) 1.4-1.6x the
# dp4a tiles (Q4_0 14336 x 4096: 103 against 67 TOPS; 2048 x 2048: 76 against 54), to the bit the
# same outputs; 128 tokens (WIDE_TILE's shape) ran Q4_1's 14336 x 4096 at 45 against the dp4a
# tiles' 63
MMA_TILE = (16, 16, 8, 4, 4)


def _gemmq_local_bytes(tile: tuple[int, ...], wtype: GGMLType, mma: int = 0) -> int:
    rx, ry, tm, tn, nb = tile
    bm, bn = rx * tm, ry * tn
    pad = 8 if mma else 4  # ints a word row
    scales = 2 if wtype in (GGMLType.Q4_1, GGMLType.Q5_1) else 1  # and the mins, the sums
    fragments = 6 * rx * ry if mma == 2 else 0
    return 4 * (nb * 8 * (bm + pad) + nb * 8 * (bn + pad) + scales * nb * (bm + bn) + fragments)


def gemmq_tiles(info: dict, wtype: GGMLType, m: int, t: int) -> list[tuple[int, ...]]:
    """The tiles the device's work-group size and local memory take, best first: the largest
    that still gives every compute unit a work-group (else the smallest), then the smaller.
    Where tensor cores run gemmq, MMA_TILE comes first (with GQ_MMA, a sixth field)."""
    first = () if wtype in (GGMLType.Q4_0, GGMLType.Q5_0) else (WIDE_TILE,)
    mma = 1 if info.get("nv_mma") else 2 if info.get("emulate_mma") else 0

    def fits(tile: tuple[int, ...], on: int = 0) -> bool:
        return (tile[0] * tile[1] <= info["max_work_group_size"]
                and _gemmq_local_bytes(tile, wtype, on) <= info["local_mem_size"])  # fmt: skip

    tiles = [tile for tile in first + GEMMQ_TILES if fits(tile)]
    full = [i for i, (rx, ry, tm, tn, _) in enumerate(tiles)
            if _groups(m, rx * tm) * _groups(t, ry * tn) >= info["compute_units"]]  # fmt: skip
    tiles = tiles[full[0] :] if full else tiles[-1:]
    return [(*MMA_TILE, mma), *tiles] if mma and fits(MMA_TILE, mma) else tiles


def _launch_gemmq(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p = step.params
    wtype, m, k, t = p["type"], p["m"], p["k"], p["t"]
    res, has_res = (prog.arg(step.ins[1]), 1) if len(step.ins) > 1 else (prog.arg(step.out), 0)
    args = (*prog.arg(step.ins[0]), np.int64(p["row_bytes"]), *q8_arg(prog, p["q8"], t * k),
            *prog.arg(step.out), *res, np.int32(has_res), np.int32(m), np.int32(k),
            np.int32(t))  # fmt: skip
    # program.py lowers to gemmq only where the smallest tile fits the device's limits; a
    # compiler may still refuse a tile (or its tensor-core PTX) or build it for fewer
    # work-items (registers): the next
    for rx, ry, tm, tn, nb, *on in gemmq_tiles(prog.device_info, wtype, m, t):
        try:
            kernel = q8_kernel(prog, wtype, "gemmq", GQ_RX=rx, GQ_RY=ry, GQ_TM=tm, GQ_TN=tn,
                                GQ_NB=nb, **({"GQ_MMA": on[0]} if on else {}))  # fmt: skip
        except cl.Error as exc:
            error = exc
            continue
        wg = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE,
                                        prog.device.cl_device)  # fmt: skip
        if wg >= rx * ry:
            size = (_groups(m, rx * tm) * rx * ry, _groups(t, ry * tn))
            return [Launch(kernel, size, (rx * ry, 1), args)]
        error = LlmrtError(f"gemmq of {rx * ry} work-items built for {wg} at most")
    raise LlmrtError(f"no gemmq tile builds on {prog.device.id}: {error}")


LAUNCHES: dict[str, Callable[[OpenCLProgram, Step], list[Launch]]] = {
    "get_rows_w": _launch_get_rows_w,
    "mmv": _launch_mmv,
    "gemm": _launch_gemm,
    "mmvq": _launch_mmvq,
    "gemmq": _launch_gemmq,
}
