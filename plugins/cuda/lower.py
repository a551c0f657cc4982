"""Lowering a graph to CUDA steps: pure Python, no cupy (tested without a GPU).

`lower(graph)` fuses the graph for this backend (core/lower: a norm's weight, a small-batch
product's residual), walks the nodes once and returns `Plan`: storages (weights, state, inputs and
activation ranges), views of them (views, reshapes and permutes cost nothing) and steps (one
kernel launch each, or a GEMM). Non-contiguous operands get an explicit copy step. Then the
small-batch rewrites of the step list (`_decode_passes`) and the liveness of every storage, which
`llmrt.lower.plan_arena` turns into one arena.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower import ALIGN, Storage, View, alias, fuse

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
# Weight types whose blocks the kernels read as they are (weights.cu, dequant32).
WEIGHT_TYPES = frozenset({
    F32, F16, BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
ITEMSIZE = {F32: 4, F16: 2, I32: 4, BF16: 2}
# Weight types whose mat-vec runs on int8 activations (__dp4a), quantized once per input.
Q8_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0})
MMV_MAX_T = 8  # mul_mat with at most this many token rows runs as matrix-vector kernels
MMVQ_MAX_T = 64  # the integer mat-vec (exact int8 dot products, as ggml) also serves short prompts
FATTN_DIMS = (16, 32, 64, 128, 256)
FATTN_MAX_S = 32768
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
Reads = Callable[..., int]  # reads(storage, skip_step=None): readers of a storage, outputs 1000


@dataclass
class Step:
    op: str
    ins: list[View]
    out: View | None
    params: dict[str, Any] = field(default_factory=dict)
    temps: list[Storage] = field(default_factory=list)  # scratch used only by this step


@dataclass
class Plan:
    storages: list[Storage]
    steps: list[Step]
    inputs: dict[str, View]
    outputs: dict[str, View]


def _nbytes(dtype: GGMLType, n: int) -> int:
    return ITEMSIZE.get(dtype, 4) * n


def _is_mmv(mm: Tensor) -> bool:
    a, b = mm.srcs[:2]
    return (
        a.op is Op.WEIGHT and len(a.shape) == 2 and math.prod(b.shape[:-1]) <= _mmv_max_t(a.dtype)
    )


def _mmv_max_t(dtype: GGMLType) -> int:
    return max(MMV_MAX_T, MMVQ_MAX_T) if dtype in Q8_TYPES else MMV_MAX_T


def _all_f32(node: Tensor) -> bool:
    return all(x.dtype == F32 for x in node.srcs)


def _get_rows(node: Tensor) -> bool:
    t = node.srcs[0]
    if t.op is Op.WEIGHT:
        return t.dtype in WEIGHT_TYPES and t.shape[1] % 32 == 0
    return t.dtype == F32


def _mul_mat(node: Tensor) -> bool:
    a, b = node.srcs[:2]
    if b.dtype != F32:
        return False
    if len(node.srcs) == 3:  # the fused residual: small batches, in the mat-vec's epilogue
        return _is_mmv(node) and node.srcs[2].dtype == F32 and a.dtype in WEIGHT_TYPES
    if a.op is Op.WEIGHT and len(a.shape) == 2:
        return a.dtype in WEIGHT_TYPES and a.shape[1] % 32 == 0
    return a.dtype in (F32, F16)


def _attention(node: Tensor) -> bool:
    q, k, v = node.srcs[:3]
    d = q.shape[2]
    return (
        d in FATTN_DIMS and v.shape[2] == d and k.dtype == v.dtype and k.dtype in (F32, F16)
        and k.strides[-1] == 1 and v.strides[-1] == 1 and k.shape[0] <= FATTN_MAX_S
    )  # fmt: skip


SUPPORTS: dict[Op, Callable[[Tensor], bool]] = {
    **dict.fromkeys((*LEAVES, Op.VIEW, Op.RESHAPE, Op.PERMUTE), lambda n: True),
    Op.CONT: lambda n: len(n.shape) <= 4 and n.srcs[0].dtype in (F32, F16, I32),
    Op.CPY: lambda n: len(n.shape) <= 4 and n.srcs[0].dtype in (F32, F16)
    and n.dtype in (F32, F16),
    Op.GET_ROWS: _get_rows,
    Op.SET_ROWS: lambda n: n.srcs[0].dtype in (F32, F16) and n.srcs[2].dtype == F32,
    Op.MUL_MAT: _mul_mat,
    **dict.fromkeys((Op.ADD, Op.MUL), lambda n: len(n.shape) <= 4 and _all_f32(n)),
    **dict.fromkeys((Op.SCALE, Op.SILU, Op.GELU, Op.SWIGLU, Op.GEGLU, Op.RMS_NORM, Op.NORM),
                    _all_f32),
    Op.ROPE: lambda n: n.srcs[0].dtype == F32 and len(n.srcs[0].shape) == 3
    and all(x.dtype in (F32, I32) for x in n.srcs),
    Op.SOFT_MAX: lambda n: len(n.srcs) == 1 or tuple(n.srcs[1].shape) == tuple(n.shape[-2:]),
    Op.FLASH_ATTN_EXT: _attention,
    Op.ARGMAX: lambda n: n.srcs[0].dtype == F32,
}  # fmt: skip


def supports(node: Tensor) -> bool:
    """What the kernels implement; drives placement, fusion and conformance skips."""
    check = SUPPORTS.get(node.op)
    return check is not None and check(node)


class _Lowerer:
    def __init__(self) -> None:
        self.storages: list[Storage] = []
        self.steps: list[Step] = []
        self.views: dict[int, View] = {}

    def storage(self, kind: str, nbytes: int, key: str = "") -> Storage:
        self.storages.append(Storage(kind, max(int(nbytes), 1), key))
        return self.storages[-1]

    def new(self, shape: tuple[int, ...], dtype: GGMLType) -> View:
        return View.whole(self.storage("arena", _nbytes(dtype, math.prod(shape))), shape, dtype)

    def emit(self, kind: str, ins: list[View], out: View | None, **params: Any) -> Step:
        step = Step(kind, ins, out, params)
        self.steps.append(step)
        return step

    def of(self, t: Tensor) -> View:
        return self.views[id(t)]

    def c(self, t: Tensor) -> View:
        """t's view, copied first where it is strided."""
        return self.contiguous(self.views[id(t)])

    def contiguous(self, v: View) -> View:
        if v.contiguous:
            return v
        out = self.new(v.shape, v.dtype)
        self.emit("copy", [v], out, mode=0 if ITEMSIZE[v.dtype] == 4 else 1)
        return out

    def out(self, node: Tensor, kind: str, ins: list[View], **params: Any) -> View:
        """A step writing node's value into a new activation range."""
        out = self.new(node.shape, node.dtype)
        self.emit(kind, ins, out, **params)
        return out


def lower(graph: Graph) -> Plan:
    graph = fuse(graph, supports)
    lo = _Lowerer()
    inputs: dict[str, View] = {}
    for node in graph.nodes:
        if node.op in LEAVES:
            kind = {Op.WEIGHT: "weight", Op.STATE: "state", Op.INPUT: "input"}[node.op]
            st = lo.storage(kind, _nbytes(node.dtype, node.n_elements), node.key)
            lo.views[id(node)] = View.whole(st, node.shape, node.dtype)
            if node.op is Op.INPUT:
                inputs[node.key] = lo.views[id(node)]
        elif node.op in (Op.VIEW, Op.RESHAPE):
            lo.views[id(node)] = alias(node, lo.c(node.srcs[0]))
        elif node.op is Op.PERMUTE:
            lo.views[id(node)] = alias(node, lo.of(node.srcs[0]))
        else:
            lowering = LOWERINGS.get(node.op)
            if lowering is None:
                raise NotImplementedError(f"no CUDA lowering for {node.op.value}")
            lo.views[id(node)] = lowering(lo, node)
    outputs = {name: lo.c(t) for name, t in graph.outputs.items()}
    _decode_passes(lo.steps, lo.storage, lambda st, skip=None: _reads(lo.steps, outputs, st, skip))
    _liveness(lo.steps, outputs)
    return Plan(lo.storages, lo.steps, inputs, outputs)


def _copy(lo: _Lowerer, node: Tensor) -> View:
    src = lo.of(node.srcs[0])
    if src.dtype == node.dtype:
        mode = 0 if ITEMSIZE[src.dtype] == 4 else 1
    else:
        mode = 2 if node.dtype == F16 else 3
    return lo.out(node, "copy", [src], mode=mode)


def _lower_get_rows(lo: _Lowerer, node: Tensor) -> View:
    table, ids = node.srcs
    if table.op is Op.WEIGHT:
        return lo.out(node, "get_rows_w", [lo.of(table), lo.c(ids)], type=table.dtype,
                      shape=table.shape)  # fmt: skip
    return lo.out(node, "get_rows_f32", [lo.c(table), lo.c(ids)])


def _lower_set_rows(lo: _Lowerer, node: Tensor) -> View:
    dst, ids, src = node.srcs
    d = lo.of(dst)
    lo.emit("set_rows", [d, lo.c(ids), lo.c(src)], None)
    return d


def _lower_mul_mat(lo: _Lowerer, node: Tensor) -> View:
    a, b = node.srcs[:2]
    residual = lo.c(node.srcs[2]) if len(node.srcs) == 3 else None
    bv = lo.c(b)
    out = lo.new(node.shape, F32)
    k = a.shape[-1]
    t = math.prod(b.shape[:-1])
    if a.op is Op.WEIGHT and len(a.shape) == 2:
        m = a.shape[0]
        params = dict(type=a.dtype, m=m, k=k, t=t, row_bytes=a.dtype.row_nbytes(k))
        ins = [lo.of(a), bv] + ([residual] if residual is not None else [])
        if t <= _mmv_max_t(a.dtype):
            lo.emit("mmv", ins, out, **params)
        else:
            step = lo.emit("gemm", ins, out, **params)
            step.temps = [lo.storage("arena", m * k * 2), lo.storage("arena", t * k * 2)]
        return out
    n_a, n_b = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
    lo.emit("mm_act", [lo.c(a), bv], out, nb=n_b, r=n_b // n_a, t=b.shape[-2], m=a.shape[-2], k=k)
    return out


def _lower_norm(lo: _Lowerer, node: Tensor) -> View:
    return lo.out(node, "norm", [lo.c(s) for s in node.srcs], eps=node.params["eps"],
                  mode=0 if node.op is Op.RMS_NORM else 1)  # fmt: skip


LOWERINGS: dict[Op, Callable[[_Lowerer, Tensor], View]] = {
    Op.CONT: _copy,
    Op.CPY: _copy,
    Op.GET_ROWS: _lower_get_rows,
    Op.SET_ROWS: _lower_set_rows,
    Op.MUL_MAT: _lower_mul_mat,
    Op.ADD: lambda lo, n: lo.out(n, "binary", [lo.c(s) for s in n.srcs], op=0),
    Op.MUL: lambda lo, n: lo.out(n, "binary", [lo.c(s) for s in n.srcs], op=1),
    **{
        op: lambda lo, n, which=which: lo.out(n, "unary", [lo.c(n.srcs[0])], op=which,
                                               scale=n.params.get("scale", 1.0))
        for op, which in ((Op.SCALE, 0), (Op.SILU, 1), (Op.GELU, 2))
    },
    Op.SWIGLU: lambda lo, n: lo.out(n, "glu", [lo.c(s) for s in n.srcs], op=0),
    Op.GEGLU: lambda lo, n: lo.out(n, "glu", [lo.c(s) for s in n.srcs], op=1),
    Op.RMS_NORM: _lower_norm,
    Op.NORM: _lower_norm,
    Op.ROPE: lambda lo, n: lo.out(n, "rope", [lo.c(s) for s in n.srcs], **n.params),
    Op.SOFT_MAX: lambda lo, n: lo.out(n, "soft_max", [lo.c(s) for s in n.srcs],
                                      scale=n.params["scale"]),
    Op.FLASH_ATTN_EXT: lambda lo, n: lo.out(
        n, "fattn", [lo.c(n.srcs[0]), lo.of(n.srcs[1]), lo.of(n.srcs[2])]
        + [lo.c(s) for s in n.srcs[3:]], scale=n.params["scale"], softcap=n.params["softcap"]),
    Op.ARGMAX: lambda lo, n: lo.out(n, "argmax", [lo.c(n.srcs[0])]),
}  # fmt: skip


def _liveness(steps: list[Step], outputs: dict[str, View]) -> None:
    """The first step writing and the last reading each arena storage (outputs live on)."""

    def writes(st: Storage, i: int) -> None:
        if st.first < 0:
            st.first = i

    def reads(st: Storage, i: int) -> None:
        st.last = max(st.last, i)

    for i, step in enumerate(steps):
        for v in step.ins:
            reads(v.storage, i)
        for v in [step.out, *step.params.get("outs", ())]:
            if v is not None:
                writes(v.storage, i)
        q8 = step.params.get("q8")
        if q8 is not None:  # written by quant_q8 / norm_q8 / fattn, read by mmvq
            if step.op in ("quant_q8", "norm_q8", "fattn"):
                writes(q8, i)
            reads(q8, i)
        for st in step.temps:
            st.first = st.last = i
    for v in outputs.values():
        v.storage.last = 1 << 40


def q8_layout(n: int) -> tuple[int, int]:
    """(offset of the per-block (scale, sum) pairs, total bytes) of n activations as q8."""
    dso = -(-n // ALIGN) * ALIGN
    return dso, dso + (n // 32) * 8


def _reads(steps: list[Step], outputs: dict[str, View], st: Storage, skip: Step | None = None):
    n = sum(1 for s in steps if s is not skip for v in s.ins if v.storage is st)
    return n + sum(1000 for v in outputs.values() if v.storage is st)


# ---- small-batch rewrites of the step list -------------------------------------------------------


def _decode_passes(steps: list[Step], storage: Callable[..., Storage], reads: Reads) -> None:
    """Mat-vecs of the legacy quants read activations quantized once to q8 (by the norm or
    attention that produces them, or a quant_q8 step); mat-vecs sharing those activations run as
    one launch (q/k/v), gate/up + GLU as one, rope(q), rope(k) + the two KV-cache writes of a
    layer as one, and a one-token step's attention does that rope and those writes itself.
    `reads` counts the readers of a storage in the steps as they are when a pass starts."""
    steps[:] = _q8_activations(steps, storage)
    for rewrite in (_glu_mat_vecs, _shared_mat_vecs, _rope_qkv, _rope_in_attention):
        steps[:] = rewrite(steps, reads)
    for st in steps:  # a norm whose f32 output only fed mat-vecs need not write it
        if st.op == "norm_q8":
            st.params["y_unused"] = reads(st.out.storage) == 0


def _q8_activations(steps: list[Step], storage: Callable[..., Storage]) -> list[Step]:
    q8_of: dict[tuple[Storage, int, int], Storage] = {}
    out: list[Step] = []
    for st in steps:
        if st.op == "mmv" and st.params["type"] in Q8_TYPES:
            x = st.ins[1]
            key = (x.storage, x.offset, x.n)
            q8 = q8_of.get(key)
            if q8 is None:
                q8 = q8_of[key] = storage("arena", q8_layout(x.n)[1])
                writers = (p for p in reversed(out) if p.out is not None)
                prod = next((p for p in writers if p.out.storage is x.storage), None)
                fits = prod is not None and prod.out.same(x) and prod.out.shape[-1] % 32 == 0
                if fits and prod.op == "norm":
                    prod.op = "norm_q8"
                    prod.params["q8"] = q8
                elif fits and prod.op == "fattn":  # attention writes its output as q8 too
                    prod.params["q8"] = q8
                else:
                    out.append(Step("quant_q8", [x], None, {"q8": q8, "n": x.n}))
            st.op = "mmvq"
            st.params["q8"] = q8
            st.ins = [st.ins[0], *st.ins[2:]]
        out.append(st)
    return out


def _glu_mat_vecs(steps: list[Step], reads: Reads) -> list[Step]:
    """gate and up mat-vecs over one q8 input, then their GLU: one launch."""
    out: list[Step] = []
    i = 0
    while i < len(steps):
        a = steps[i]
        if i + 2 < len(steps) and [s.op for s in steps[i : i + 3]] == ["mmvq", "mmvq", "glu"]:
            b, g = steps[i + 1], steps[i + 2]
            pa, pb = a.params, b.params
            plain = len(a.ins) == 1 and len(b.ins) == 1
            same = (pa["q8"] is pb["q8"] and pa["type"] == pb["type"] and pa["k"] == pb["k"]
                    and pa["m"] == pb["m"] and a.ins[0].dtype == b.ins[0].dtype)  # fmt: skip
            order = None
            if g.ins[0].same(a.out) and g.ins[1].same(b.out):
                order = (a, b)
            elif g.ins[0].same(b.out) and g.ins[1].same(a.out):
                order = (b, a)
            if plain and same and order and reads(a.out.storage) == reads(b.out.storage) == 1:
                gate, up = order
                params = dict(gate.params, glu=g.params["op"])
                out.append(Step("mmvq", [gate.ins[0], up.ins[0]], g.out, params))
                i += 3
                continue
        out.append(a)
        i += 1
    return out


def _shared_mat_vecs(steps: list[Step], reads: Reads) -> list[Step]:
    """Up to three plain mat-vecs over the same q8 input (q, k, v): one launch."""
    out: list[Step] = []
    for st in steps:
        prev = out[-1] if out else None
        if (st.op == "mmvq" and prev is not None and prev.op == "mmvq" and len(st.ins) == 1
                and "glu" not in st.params and "glu" not in prev.params
                and prev.params["q8"] is st.params["q8"]
                and prev.params["type"] == st.params["type"]
                and prev.params["k"] == st.params["k"] and len(prev.params.get("outs", [1])) < 3
                and (len(prev.ins) == 1 or "outs" in prev.params)):  # fmt: skip
            if "outs" not in prev.params:
                prev.params["outs"] = [prev.out]
                prev.params["ms"] = [prev.params["m"]]
            prev.ins.append(st.ins[0])
            prev.params["outs"].append(st.out)
            prev.params["ms"].append(st.params["m"])
            continue
        out.append(st)
    return out


def _rope_qkv(steps: list[Step], reads: Reads) -> list[Step]:
    """rope(q), rope(k), set_rows(K cache, rope(k)), set_rows(V cache, v): one launch."""
    out: list[Step] = []
    i = 0
    while i < len(steps):
        w = steps[i : i + 4]
        match = _rope_qkv_match(w, reads) if len(w) == 4 else None
        if match is not None:
            rq, rk, sk, sv = match
            out.append(Step("rope_qkv", [rq.ins[0], rk.ins[0], sv.ins[2], *rq.ins[1:],
                                         sk.ins[0], sv.ins[0], sk.ins[1]], rq.out,
                            dict(rq.params)))  # fmt: skip
            i += 4
            continue
        out.append(steps[i])
        i += 1
    return out


def _rope_qkv_match(w: list[Step], reads: Reads) -> tuple[Step, ...] | None:
    if [s.op for s in w] != ["rope", "rope", "set_rows", "set_rows"]:
        return None
    r1, r2, s1, s2 = w
    same_rope = (
        r1.params == r2.params and r1.ins[1].same(r2.ins[1]) and len(r1.ins) == len(r2.ins)
        and (len(r1.ins) < 3 or r1.ins[2].same(r2.ins[2])) and s1.ins[1].same(s2.ins[1])
    )  # fmt: skip
    match = None
    for rk, rq in ((r1, r2), (r2, r1)):
        for sk, sv in ((s1, s2), (s2, s1)):
            if sk.ins[2].same(rk.out) and not sv.ins[2].same(rq.out):
                match = (rq, rk, sk, sv)
    if not same_rope or match is None:
        return None
    rq, rk, sk, sv = match
    if reads(rk.out.storage, sk) != 0 or rq.ins[0].shape[-1] != rk.ins[0].shape[-1]:
        return None
    return match


def _attention_takes_new_row(rope_qkv: Step, fattn: Step) -> bool:
    """One token whose roped q only the attention reads, and caches laid out [cell, head, dim]
    as the attention's K and V views: the attention kernel can rope and store the row itself."""
    q, k, v = fattn.ins[:3]
    kc, vc, ids = rope_qkv.ins[-3:]
    t, _, d = q.shape
    hk = k.shape[1]
    vrow = rope_qkv.ins[2].n // ids.n
    return (
        t == 1 and ids.n == 1 and fattn.ins[0].same(rope_qkv.out) and vrow == hk * d
        and k.storage is kc.storage and k.offset == kc.offset and v.storage is vc.storage
        and v.offset == vc.offset and tuple(k.strides[:2]) == (hk * d, d)
        and tuple(v.strides[:2]) == (hk * d, d)
    )  # fmt: skip


def _rope_in_attention(steps: list[Step], reads: Reads) -> list[Step]:
    """A one-token step's attention ropes q and k itself and writes the new K/V rows (the
    rope_qkv launch goes): the new row's values come from shared memory, the rest from the cache."""
    out: list[Step] = []
    for st in steps:
        prev = out[-1] if out else None
        if (st.op == "fattn" and prev is not None and prev.op == "rope_qkv"
                and _attention_takes_new_row(prev, st)
                and reads(prev.out.storage, st) == 0):  # fmt: skip
            q, kn, vn, pos = prev.ins[:4]
            ff = prev.ins[4:5] if len(prev.ins) == 8 else []
            kc, vc, ids = prev.ins[-3:]
            st.params["nr"] = len(st.ins)  # ins from here: the new row and where it goes
            st.params["rope"] = dict(prev.params)
            st.ins = [q, *st.ins[1:], kn, vn, pos, ids, kc, vc, *ff]
            out[-1] = st
            continue
        out.append(st)
    return out
