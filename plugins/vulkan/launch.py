"""The dispatches of each step kind (lower.py): shader, specialization, bindings, push constants
and workgroups. A binding is a storage and a byte offset into it; element offsets and strides
go in push constants (``View`` offsets are in elements from the binding's start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmrt.errors import UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX
from llmrt.lower.passes import q8_of
from llmrt.lower.split import row_chunks
from llmrt.lower.steps import ITEMSIZE, Step
from llmrt.lower.view import Storage, View, dims4
from llmrt_vulkan import shaders
from llmrt_vulkan.lower import MAX_T_MATVEC, attn_rows

if TYPE_CHECKING:
    from llmrt_vulkan.program import VulkanProgram

F32, F16 = GGMLType.F32, GGMLType.F16
MATVEC_ROWS = 4  # weight rows per workgroup of matvec.comp
PROLOGUE_ROWS = 8  # weight rows per workgroup of matvec_q8p (the PROLOGUE variant)
PROLOGUE_WGS = 512  # a matvec_q8p dispatch's workgroups at most (each takes every 512th row group)
# matvec_q8p's push constants: the mat-vec's, the prologue's, the epilogue's (rope, cache rows)
Q8P_PUSH = "<14IfI9If"
ATTN_COOP_FROM = 16  # a prompt's tokens from which attention runs on the matrix units
# ggml type -> the TYPE specialization constant of quant.glsl
TYPE_CODES = {
    GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.BF16: 2, GGMLType.Q4_0: 3, GGMLType.Q4_1: 4,
    GGMLType.Q5_0: 5, GGMLType.Q5_1: 6, GGMLType.Q8_0: 7, GGMLType.Q4_K: 8, GGMLType.Q5_K: 9,
    GGMLType.Q6_K: 10,
}  # fmt: skip
ELTWISE = {"copy": 0, "binary": 1, "unary": 3, "glu": 6}  # + params["op"]: eltwise.comp's op
Binding = View | Storage | tuple[Storage, int]


@dataclass
class Dispatch:
    shader: str
    spec: tuple[int, ...]
    bindings: list[tuple[Storage, int]]  # storage, byte offset into it where the binding starts
    push_format: str
    push: tuple[Any, ...]
    groups: tuple[int, int, int]
    reads: list[Storage]
    writes: list[Storage]


def dispatch(shader: str, spec: tuple[int, ...], bindings: list[Binding], fmt: str,
             push: tuple[Any, ...], groups: tuple[int, int, int], reads: list[View | Storage],
             writes: list[View | Storage]) -> Dispatch:  # fmt: skip
    def store(x: View | Storage) -> Storage:
        return x.storage if isinstance(x, View) else x

    binds = [b if isinstance(b, tuple) else (store(b), 0) for b in bindings]
    return Dispatch(shader, spec, binds, fmt, push, groups, [store(r) for r in reads],
                    [store(w) for w in writes])  # fmt: skip


def _q8_out(st: Step, out: View) -> tuple[list[Binding], list[View | Storage]]:
    """The bindings of the q8 blocks a step writes besides `out` (`out` twice where it writes
    none), and what it writes."""
    if "q8" not in st.params:
        return [out, out], [out]
    q8, qs = q8_of(st, out.n)
    return [q8, (q8, qs)], [out, q8]


def quant_q8(prog: VulkanProgram, st: Step, glu: tuple[View, View] | None = None):
    """quantize_q8.comp: q8 blocks of the step's operand, or (`glu`: up, out) of swiglu(it, up),
    also written as f32 to out."""
    x = st.ins[0]
    up, out = glu or (x, x)
    q8, qs = q8_of(st, x.n)
    nblocks = x.n // 32
    groups = prog.grid(-(-nblocks // 32))
    mode = (1, up.offset // 4, out.offset // 4) if glu else (0, 0, 0)
    push = (nblocks, x.offset // 4, groups[0], *mode)
    reads, writes = ([x, up], [out, q8]) if glu else ([x], [q8])
    return [dispatch("quantize_q8", (), [x, q8, (q8, qs), up, out], "<6I", push, groups, reads,
                     writes)]  # fmt: skip


def eltwise(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    a, b, out = st.ins[0], st.arg(1), st.out
    if "q8" in st.params:  # swiglu, written as f32 and as q8 blocks
        return quant_q8(prog, st, (b, out))
    op = ELTWISE[st.op] + st.params.get("op", 0)
    if len(out.shape) > 4:
        raise UnsupportedOp("element-wise ops take at most 4 dimensions")
    ne, sa, sb = dims4(out.shape, 1)[::-1], dims4(a.strides, 0)[::-1], (0, 0, 0, 0)
    if b is not None:  # b aligns with a's trailing dimensions; size-1 (or missing) ones broadcast
        strides = tuple(0 if d == 1 else s for d, s in zip(b.shape, b.strides, strict=True))
        sb = dims4(strides, 0)[::-1]
    flags = op | (256 if a.dtype == F16 else 0) | (1024 if out.dtype == F16 else 0)
    flags |= 512 if b is not None and b.dtype == F16 else 0
    groups = prog.grid(-(-out.n // 512))
    bb = b if b is not None else a
    s = st.params["scale"] if st.op == "unary" and op == 3 else 0.0
    push = (*ne, *sa, *sb, a.offset, bb.offset, out.offset, flags, s, out.n, groups[0])
    return [dispatch("eltwise", (), [a, bb, out, prog.gelu()], "<12I4IfII", push, groups,
                     [a, bb], [out])]  # fmt: skip


def get_rows(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    """A dispatch a binding's range of the table: a weight table larger than one binding may
    address (lavapipe: 128 MiB; Gemma 3's embedding is 170 MiB) is read a range of rows at a
    time, each dispatch writing the rows whose ids fall in its range."""
    (table, ids), out = st.ins, st.out
    k, code = out.shape[1], TYPE_CODES[table.dtype]
    row_bytes = table.dtype.row_nbytes(k)  # a weight's rows are ggml blocks
    n4 = out.n // 4
    groups = prog.grid(-(-n4 // 256))
    if st.op == "get_rows_f32":  # an activation's table: one binding, any id
        ranges, table_byte = [(0, 0xFFFFFFFF)], table.offset * ITEMSIZE[table.dtype]
    else:
        ranges, table_byte = row_chunks(st.params["shape"][0], row_bytes, prog.rt.max_range), 0
    return [
        dispatch("get_rows", (code,), [(table.storage, r0 * row_bytes), ids, out], "<9I",
                 (k, row_bytes, table_byte, ids.offset, out.offset // 4, n4, groups[0], r0, n),
                 groups, [table, ids], [out])
        for r0, n in ranges
    ]  # fmt: skip


def set_rows(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    dst, ids, src = st.ins
    width, rows = math.prod(dst.shape[1:]), src.shape[0]
    groups = prog.grid(-(-(rows * ((width + 1) // 2)) // 256))
    push = (width, rows, src.offset, ids.offset, dst.offset, int(dst.dtype == F16), groups[0])
    return [dispatch("set_rows", (), [src, ids, dst], "<7I", push, groups, [src, ids, dst],
                     [dst])]  # fmt: skip


def norm(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    x, w, out = st.ins[0], st.arg(1), st.out
    n, rows = out.shape[-1], math.prod(out.shape[:-1])
    groups = prog.grid(rows)
    q8, writes = _q8_out(st, out)  # a norm_q8's
    mode = st.params["mode"] | (2 if w is not None else 0) | (4 if len(writes) > 1 else 0)
    push = (n, rows, x.offset, out.offset, mode, st.params["eps"], groups[0],
            w.offset if w is not None else 0)  # fmt: skip
    return [dispatch("norm", (), [x, out, w or x, *q8], "<5IfII", push, groups,
                     [x, w] if w is not None else [x], writes)]  # fmt: skip


def soft_max(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    x, mask, out = st.ins[0], st.arg(1), st.out
    n, rows = out.shape[-1], math.prod(out.shape[:-1])
    groups = prog.grid(rows)
    m = mask or x
    mask_rows = math.prod(mask.shape[:-1]) if mask is not None else 0
    push = (n, rows, x.offset, m.offset, out.offset, mask_rows, st.params["scale"], groups[0])
    return [dispatch("softmax", (), [x, m, out], "<6IfI", push, groups, [x, m], [out])]


def argmax(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    x, out = st.ins[0], st.out
    n, rows = x.shape[-1], math.prod(x.shape[:-1])
    groups = prog.grid(rows)
    return [dispatch("argmax", (), [x, out], "<5I", (n, rows, x.offset, out.offset, groups[0]),
                     groups, [x], [out])]  # fmt: skip


def rope(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    """rope.comp: into its output, or (params["cache"]) into rows ids of a cache."""
    p, x, pos = st.params, st.ins[0], st.ins[1]
    cache = p.get("cache")
    factors = st.ins[2] if len(st.ins) == (4 if cache is not None else 3) else None
    dst, ids = (cache, p["ids"]) if cache is not None else (st.out, None)
    t, h, d = x.shape
    f, i = factors or x, ids or x
    flags = (0 if ids is None else 1) | (2 if cache is not None and dst.dtype == F16 else 0)
    width = math.prod(dst.shape[1:]) if cache is not None else 0
    groups = prog.grid(-(-(t * h * (d // 2)) // 256))
    push = (t, h, d, p["n_dims"], x.offset, pos.offset, f.offset, dst.offset,
            int(p["mode"] == ROPE_NEOX), int(factors is not None), p["attn_factor"], groups[0],
            flags, i.offset, width)  # fmt: skip
    return [dispatch("rope", (), [x, pos, prog.rope_table(p), f, dst, i], "<10IfI3I", push,
                     groups, [x, pos, f, i], [dst])]  # fmt: skip


def mm_act(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    (a, b), out = st.ins, st.out
    m, k, t = a.shape[-2], a.shape[-1], b.shape[-2]
    ba, bb = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
    groups = prog.grid(-(-out.n // 256))
    push = (m, t, k, ba, bb, a.offset, b.offset, out.offset, int(a.dtype == F16), out.n,
            groups[0])  # fmt: skip
    return [dispatch("matmul_batched", (), [a, b, out], "<11I", push, groups, [a, b], [out])]


def _chunks(prog: VulkanProgram, st: Step) -> list[tuple[int, int]]:
    """(first row, rows) of each dispatch: a weight larger than one binding may address is
    split by rows."""
    return row_chunks(st.params["m"], st.params["row_bytes"], prog.rt.max_range)


def _wide_pays(wide: str, rows: int, t: int) -> bool:
    groups = -(-rows // shaders.row_tile(wide)) * -(-t // shaders.token_tile(wide))
    return t >= shaders.WIDE_FROM and groups >= shaders.WIDE_MIN_GROUPS


def mat_vec(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    """A float weight product (mmv or gemm): per-row, tiled, or mat-vecs of 8 token rows."""
    (w, b), out, p = st.ins, st.out, st.params
    k, t, m, row = p["k"], p["t"], p["m"], p["row_bytes"]
    spec, round16 = (TYPE_CODES[p["type"]],), int(p["type"] == F16)
    # the matrix units take f16: f32 and bf16 weights keep their precision in matmul.comp
    f16_ok = k % 32 == 0 and p["type"] not in (F32, GGMLType.BF16) and not prog.rt.cpu
    coop = prog.rt.coopmat if f16_ok else None
    out_ = []
    for r0, rows in _chunks(prog, st):
        binds = [(w.storage, r0 * row), b, out]
        if prog.rt.cpu or (t > MAX_T_MATVEC and k % 16 == 0):
            name = "matvec_rows" if prog.rt.cpu else coop or "matmul"
            wide = prog.rt.coopmat_wide
            if coop and wide and _wide_pays(wide, rows, t):
                name = wide
            tile = shaders.row_tile(name)
            tokens = MAX_T_MATVEC if prog.rt.cpu else shaders.token_tile(name)
            groups = (-(-rows // tile), -(-t // tokens), 1)
            push = (k, row, rows, t, b.offset // 4, out.offset + r0, m, round16, groups[0])
            out_.append(dispatch(name, spec, binds, "<9I", push, groups, [w, b], [out]))
            continue
        for t0 in range(0, t, MAX_T_MATVEC):
            groups = prog.grid(-(-rows // MATVEC_ROWS))
            push = (k, row, rows, min(MAX_T_MATVEC, t - t0), (b.offset + t0 * k) // 4,
                    out.offset + r0 + t0 * m, m, round16, groups[0])  # fmt: skip
            out_.append(dispatch("matvec", spec, binds, "<9I", push, groups, [w, b], [out]))
    return out_


def int_mat_vec(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    """The integer mat-vec: on q8 blocks another dispatch wrote (mmvq: matvec_q8), or making
    them in its prologue (mmvp: matvec_q8p, which may also rope its rows and write them into
    cache rows); a residual added in the epilogue."""
    w, out, p = st.ins[0], st.out, st.params
    k, t, m, row = p["k"], p["t"], p["m"], p["row_bytes"]
    pro, cpu, dot = p.get("pro"), prog.rt.cpu, "_dot" if prog.rt.int_dot else ""
    y = p["residual"] if pro is not None else st.arg(1)
    extra = [y] if y is not None else []
    out_ = []
    for r0, rows in _chunks(prog, st):
        mv = (w.storage, r0 * row)
        res = (int(y is not None), y.offset + r0 if y is not None else 0)
        if pro is None:
            q8, qs = q8_of(st, t * k)
            groups = (-(-rows // 64), -(-t // MAX_T_MATVEC), 1) if cpu else prog.grid(
                -(-rows // MATVEC_ROWS))  # fmt: skip
            push = (k, row, rows, t, out.offset + r0, m, groups[0], *res)
            out_.append(dispatch("matvec_q8" + dot + ("_rows" if cpu else ""),
                                 (TYPE_CODES[p["type"]],), [mv, q8, (q8, qs), out, y or out],
                                 "<9I", push, groups, [w, q8, *extra], [out]))  # fmt: skip
            continue
        x, b = p["a"], p["b"]
        binds, epi, reads, writes = _epilogue(prog, st)
        groups = prog.grid(max(1, min(-(-rows // PROLOGUE_ROWS), PROLOGUE_WGS)))
        push = (k, row, rows, t, out.offset + r0, m, groups[0], *res, pro["mode"], x.offset,
                b.offset, pro.get("dv", 1), pro.get("splits", 1), pro.get("eps", 0.0),
                groups[0] * groups[1], *epi)  # fmt: skip
        out_.append(dispatch("matvec_q8p" + dot, (TYPE_CODES[p["type"]],),
                             [mv, out, out, binds[0], y or out, x, b, *binds[1:]], Q8P_PUSH, push,
                             groups, [w, x, b, *extra, *reads], writes))  # fmt: skip
    return out_


def _epilogue(prog: VulkanProgram, st: Step) -> tuple[list[Binding], list[Any], list, list]:
    """matvec_q8p's epilogue: bindings 3 and 7-10, push constants (emode, eo, width, dim,
    n_dims, opos, off, oi, has_factors, attn_factor), what else it reads, what it writes.
    emode 1 ropes the rows, 2 writes them into cache rows (4: an f16 cache)."""
    p, out = st.params, st.out
    binds: list[Binding] = [out] * 5
    epi: list[Any] = [0] * 9 + [1.0]
    reads: list[View | Storage] = []
    if "rope" in p:
        r, pos, factors = p["rope"], p["pos"], p["factors"]
        table, f = prog.rope_table(r), factors or pos
        binds[1:4] = [pos, table, f]
        reads += [pos, table, f]
        epi = [1, 0, 0, r["dim"], r["n_dims"], pos.offset, f.offset, 0, int(factors is not None),
               r["attn_factor"]]  # fmt: skip
    elif "cache" in p:
        epi[3] = 2  # dim: any even number
    if "cache" not in p:
        return binds, epi, reads, [out]
    dst, ids = p["cache"], p["ids"]
    binds[0], binds[4] = dst, ids
    epi[0] |= 2 | (4 if dst.dtype == F16 else 0)
    epi[1], epi[2], epi[7] = dst.offset, math.prod(dst.shape[1:]), ids.offset
    return binds, epi, [*reads, ids], [dst]


def _attn_coop(prog: VulkanProgram, st: Step) -> str | None:
    """The flash_attn_coop variant a prompt's attention takes, or None: over f16 caches, with
    head sizes the matrix units tile (multiples of 16, the shared memory's worth), a prompt of
    ATTN_COOP_FROM tokens or more. Its parts, where split, are flash_attn's."""
    (t, _, dk), k, v = st.ins[0].shape, st.ins[1], st.ins[2]
    dv, coop = v.shape[2], prog.rt.coopmat_attn
    if coop is None or t < ATTN_COOP_FROM:
        return None
    sizes_ok = dk % 16 == 0 and dv % 16 == 0 and dk <= 128 and dv <= 128
    fits = sizes_ok and shaders.attn_coop_shared_bytes(coop, dk, dv) <= prog.rt.max_shared
    return coop if fits and k.dtype == F16 and v.dtype == F16 else None


def fattn(prog: VulkanProgram, st: Step) -> list[Dispatch]:
    """flash_attn (split over the KV length, the parts merged by attn_combine or by the
    prologues of the mat-vecs reading them) or lavapipe's per-row flash_attn_rows."""
    (q, k, v), mask = st.ins[:3], st.arg(3)
    (t, hq, dk), (s, hkv, dv) = q.shape, v.shape
    splits, chunk, out = st.params["splits"], st.params["chunk"], st.out
    rows = attn_rows(prog.rt.cpu, s, max(dk, dv))
    flags = int(k.dtype == F16) | int(v.dtype == F16) << 1 | int(mask is not None) << 2
    m = mask or q
    dst = View.whole(st.temps[0], (t * hq * splits * (dv + 2),), F32) if st.temps else out
    nh = st.params["heads"]
    shader, fmt = ("flash_attn_rows", "<14I2fI") if rows else ("flash_attn", "<14I2f3I")
    n_groups = -(-(t * hq) // 16) if rows else t * hq // nh * splits
    coop = None if rows else _attn_coop(prog, st)
    if coop:
        shader, n_groups = coop, -(-(t * nh) // shaders.attn_rows_tile(coop)) * (hq // nh) * splits
    groups = prog.grid(n_groups)
    spec = () if rows else (dk, dv, int(k.dtype == F16), int(v.dtype == F16), nh)
    push = (dk, dv, s, hq, hkv, t, q.offset, k.offset, v.offset, m.offset, dst.offset,
            k.strides[0], v.strides[0], flags, st.params["scale"], st.params["softcap"],
            groups[0], *(() if rows else (splits, chunk)))  # fmt: skip
    out_ = [dispatch(shader, spec, [q, k, v, m, dst], fmt, push, groups, [q, k, v, m], [dst])]
    if splits > 1 and not st.params.get("parts"):
        qb, writes = _q8_out(st, out)
        groups = prog.grid(-(-(t * hq * dv // (4 if "q8" in st.params else 1)) // 256))
        push = (dv, splits, t * hq, dst.offset, out.offset, groups[0], int("q8" in st.params))
        out_.append(dispatch("attn_combine", (), [dst, out, *qb], "<7I", push, groups, [dst],
                             writes))  # fmt: skip
    return out_


LAUNCHES: dict[str, Callable[[VulkanProgram, Step], list[Dispatch]]] = {
    **dict.fromkeys(ELTWISE, eltwise), "quant_q8": quant_q8, "get_rows_w": get_rows,
    "get_rows_f32": get_rows, "set_rows": set_rows, "norm": norm, "norm_q8": norm,
    "soft_max": soft_max, "argmax": argmax, "rope": rope, "mm_act": mm_act, "mmv": mat_vec,
    "gemm": mat_vec, "mmvq": int_mat_vec, "mmvp": int_mat_vec, "fattn": fattn,
}  # fmt: skip
