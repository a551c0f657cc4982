"""Lowering a graph to CUDA steps, and the buffer plan: pure Python, no cupy (tested without a GPU).

`lower(graph)` walks the nodes once and returns `Plan`: storages (weights, state, inputs and
activation buffers), values (a storage, an element offset, shape, strides: views, reshapes and
permutes cost nothing) and steps (one kernel launch each, or a GEMM). It fuses where it pays:
rms_norm/norm followed by a row-vector mul is one step; a small-batch mul_mat whose only reader
adds a residual writes `residual + W x` in its epilogue. Non-contiguous operands get an explicit
copy step. `assign_offsets` then packs activation buffers into one arena by liveness.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Op, Tensor
from llmrt.ir.graph import contiguous_strides

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
# Weight types whose blocks the kernels read as they are (weights.cu, dequant32).
WEIGHT_TYPES = frozenset({
    F32, F16, BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
ITEMSIZE = {F32: 4, F16: 2, I32: 4, BF16: 2}
# Weight types whose mat-vec runs on int8 activations (__dp4a), quantized once per input.
Q8_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0})
Q8_FUSE = os.environ.get("LLMRT_CUDA_MMVQ", "1") != "0"
MMV_MAX_T = 8  # mul_mat with at most this many token rows runs as matrix-vector kernels
# the integer mat-vec (exact int8 dot products, as ggml) also serves short prompts
MMVQ_MAX_T = int(os.environ.get("LLMRT_CUDA_MMVQ_MAX_T", "64"))
# rope(q), rope(k) and the two KV-cache writes as one launch (LLMRT_CUDA_ROPE_QKV=0: separate)
ROPE_QKV = os.environ.get("LLMRT_CUDA_ROPE_QKV", "1") != "0"
# one-token integer mat-vecs quantize f32 activations of at most this many elements themselves
MMVQ_XF_MAX_K = int(os.environ.get("LLMRT_CUDA_MMVQ_XF_K", "0"))
# a one-token norm after a mat-vec runs in that mat-vec's last block (LLMRT_CUDA_NORM_FOLD=0: not)
NORM_FOLD = os.environ.get("LLMRT_CUDA_NORM_FOLD", "0") == "1"
# one-token attention ropes q, k and stores the new K/V rows itself (LLMRT_CUDA_ROPE_ATTN=0: a
# rope_qkv launch before it)
ROPE_ATTN = os.environ.get("LLMRT_CUDA_ROPE_ATTN", "1") != "0"
# opt-in: the gate/up mat-vec writes its glu output's q8 blocks (the block completing each group
# of 32 rows), saving the quant_q8 launch. Measured on the H100, one run: 135M 990 -> 994 t/s,
# 1B 938 -> 904, 8B 328 -> 306 (the per-block fence and atomic cost more than the launch)
GLU_Q8 = os.environ.get("LLMRT_CUDA_GLU_Q8", "0") == "1"
FATTN_DIMS = (16, 32, 64, 128, 256)
FATTN_MAX_S = 32768
ALIGN = 256
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)


@dataclass
class Storage:
    kind: str  # "weight", "state", "input", "arena"
    nbytes: int
    key: str = ""
    first: int = -1  # step that writes it (arena)
    last: int = -1  # last step that reads it (arena); a huge number for graph outputs
    offset: int = -1  # in the arena


@dataclass(frozen=True)
class Val:
    storage: int
    offset: int  # elements
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: GGMLType

    @property
    def contiguous(self) -> bool:
        return all(
            s == c for d, s, c in zip(self.shape, self.strides, contiguous_strides(self.shape),
                                      strict=True) if d != 1
        )  # fmt: skip

    @property
    def n(self) -> int:
        return math.prod(self.shape)


@dataclass
class Step:
    op: str
    ins: list[Val]
    out: Val | None
    params: dict[str, Any] = field(default_factory=dict)
    temps: list[int] = field(default_factory=list)  # scratch storages used only by this step


@dataclass
class Plan:
    storages: list[Storage]
    steps: list[Step]
    inputs: dict[str, Val]
    outputs: dict[str, Val]
    arena_nbytes: int = 0


def _nbytes(dtype: GGMLType, n: int) -> int:
    return ITEMSIZE.get(dtype, 4) * n


def supports(node: Tensor) -> bool:
    """What the kernels implement; drives placement and conformance skips."""
    op, s = node.op, node.srcs
    if op in LEAVES:
        return True
    if op in (Op.VIEW, Op.RESHAPE, Op.PERMUTE):
        return True
    if op is Op.CONT:
        return len(node.shape) <= 4 and s[0].dtype in (F32, F16, I32)
    if op is Op.CPY:
        return len(node.shape) <= 4 and s[0].dtype in (F32, F16) and node.dtype in (F32, F16)
    if op is Op.GET_ROWS:
        t = s[0]
        if t.op is Op.WEIGHT:
            return t.dtype in WEIGHT_TYPES and t.shape[1] % 32 == 0
        return t.dtype == F32
    if op is Op.SET_ROWS:
        return s[0].dtype in (F32, F16) and s[2].dtype == F32
    if op is Op.MUL_MAT:
        a, b = s
        if b.dtype != F32:
            return False
        if a.op is Op.WEIGHT and len(a.shape) == 2:
            return a.dtype in WEIGHT_TYPES and a.shape[1] % 32 == 0
        return a.dtype in (F32, F16)
    if op in (Op.ADD, Op.MUL):
        return len(node.shape) <= 4 and all(x.dtype == F32 for x in s)
    if op in (Op.SCALE, Op.SILU, Op.GELU, Op.SWIGLU, Op.GEGLU, Op.RMS_NORM, Op.NORM):
        return all(x.dtype == F32 for x in s)
    if op is Op.ROPE:
        return s[0].dtype == F32 and len(s[0].shape) == 3 and all(x.dtype in (F32, I32) for x in s)
    if op is Op.SOFT_MAX:
        return len(s) == 1 or tuple(s[1].shape) == tuple(node.shape[-2:])
    if op is Op.FLASH_ATTN_EXT:
        q, k, v = s[:3]
        d = q.shape[2]
        return (
            d in FATTN_DIMS and v.shape[2] == d and k.dtype == v.dtype and k.dtype in (F32, F16)
            and k.strides[-1] == 1 and v.strides[-1] == 1 and k.shape[0] <= FATTN_MAX_S
        )  # fmt: skip
    if op is Op.ARGMAX:
        return s[0].dtype == F32
    return False


def _readers(nodes: list[Tensor], outputs: dict[str, Tensor]) -> dict[int, int]:
    count: dict[int, int] = {}
    for node in nodes:
        for src in node.srcs:
            count[id(src)] = count.get(id(src), 0) + 1
    for t in outputs.values():
        count[id(t)] = count.get(id(t), 0) + 1000
    return count


def _is_mmv(mm: Tensor) -> bool:
    a, b = mm.srcs
    return (
        a.op is Op.WEIGHT and len(a.shape) == 2 and math.prod(b.shape[:-1]) <= _mmv_max_t(a.dtype)
    )


def _mmv_max_t(dtype: GGMLType) -> int:
    return max(MMV_MAX_T, MMVQ_MAX_T) if Q8_FUSE and dtype in Q8_TYPES else MMV_MAX_T


def _fusions(nodes: list[Tensor], outputs: dict[str, Tensor]) -> tuple[set[int], dict[int, str]]:
    """(ids of nodes computed inside a later step, id(node) -> fused kind for those steps)."""
    readers = _readers(nodes, outputs)
    absorbed: set[int] = set()
    kinds: dict[int, str] = {}
    for node in nodes:
        if node.op is Op.MUL:
            x, w = node.srcs
            if (
                x.op in (Op.RMS_NORM, Op.NORM) and readers.get(id(x)) == 1
                and tuple(w.shape) == (node.shape[-1],) and x.shape == node.shape
            ):  # fmt: skip
                absorbed.add(id(x))
                kinds[id(node)] = "norm_mul"
        elif node.op is Op.ADD:
            for which, (mm, res) in enumerate((node.srcs, node.srcs[::-1])):
                if (
                    mm.op is Op.MUL_MAT and readers.get(id(mm)) == 1 and _is_mmv(mm)
                    and res.shape == node.shape and id(mm) not in absorbed and mm is not res
                ):  # fmt: skip
                    absorbed.add(id(mm))
                    kinds[id(node)] = f"mmv_add{which}"
                    break
    return absorbed, kinds


class _Lowerer:
    def __init__(self) -> None:
        self.storages: list[Storage] = []
        self.steps: list[Step] = []
        self.vals: dict[int, Val] = {}

    def storage(self, kind: str, nbytes: int, key: str = "") -> int:
        self.storages.append(Storage(kind, max(int(nbytes), 1), key))
        return len(self.storages) - 1

    def new(self, shape: tuple[int, ...], dtype: GGMLType) -> Val:
        sid = self.storage("arena", _nbytes(dtype, math.prod(shape)))
        return Val(sid, 0, tuple(shape), contiguous_strides(shape), dtype)

    def temp(self, nbytes: int) -> int:
        return self.storage("arena", nbytes)

    def emit(self, kind: str, ins: list[Val], out: Val | None, **params: Any) -> Step:
        step = Step(kind, ins, out, params)
        self.steps.append(step)
        return step

    def contiguous(self, v: Val) -> Val:
        if v.contiguous:
            return v
        out = self.new(v.shape, v.dtype)
        self.emit("copy", [v], out, mode=0 if ITEMSIZE[v.dtype] == 4 else 1)
        return out


def lower(graph: Any) -> Plan:
    nodes: list[Tensor] = graph.nodes
    absorbed, kinds = _fusions(nodes, graph.outputs)
    lo = _Lowerer()
    vals = lo.vals
    inputs: dict[str, Val] = {}

    def val(t: Tensor) -> Val:
        return vals[id(t)]

    for node in nodes:
        op = node.op
        if id(node) in absorbed:
            continue
        if op in LEAVES:
            kind = {Op.WEIGHT: "weight", Op.STATE: "state", Op.INPUT: "input"}[op]
            sid = lo.storage(kind, _nbytes(node.dtype, node.n_elements), node.key)
            vals[id(node)] = Val(sid, 0, node.shape, contiguous_strides(node.shape), node.dtype)
            if op is Op.INPUT:
                inputs[node.key] = vals[id(node)]
            continue
        if op is Op.VIEW:
            src = lo.contiguous(val(node.srcs[0]))
            vals[id(node)] = Val(src.storage, src.offset + node.params["offset"], node.shape,
                                 node.strides, node.dtype)  # fmt: skip
            continue
        if op is Op.RESHAPE:
            src = lo.contiguous(val(node.srcs[0]))
            vals[id(node)] = Val(src.storage, src.offset, node.shape,
                                 contiguous_strides(node.shape), node.dtype)  # fmt: skip
            continue
        if op is Op.PERMUTE:
            src = val(node.srcs[0])
            axes = node.params["axes"]
            vals[id(node)] = Val(src.storage, src.offset, node.shape,
                                 tuple(src.strides[a] for a in axes), node.dtype)  # fmt: skip
            continue
        vals[id(node)] = _lower_node(lo, node, kinds.get(id(node)), val)

    outputs: dict[str, Val] = {}
    for name, t in graph.outputs.items():
        v = vals[id(t)]
        if not v.contiguous:
            v = lo.contiguous(v)
        outputs[name] = v
    if Q8_FUSE:
        _decode_fusions(lo, outputs)
    _liveness(lo.storages, lo.steps, outputs)
    return Plan(lo.storages, lo.steps, inputs, outputs)


def _lower_node(lo: _Lowerer, node: Tensor, fused: str | None, val) -> Val:
    op = node.op
    c = lo.contiguous
    if op in (Op.CONT, Op.CPY):
        src = val(node.srcs[0])
        out = lo.new(node.shape, node.dtype)
        if src.dtype == node.dtype:
            mode = 0 if ITEMSIZE[src.dtype] == 4 else 1
        else:
            mode = 2 if node.dtype == F16 else 3
        lo.emit("copy", [src], out, mode=mode)
        return out
    if op is Op.GET_ROWS:
        table, ids = node.srcs
        out = lo.new(node.shape, F32)
        if table.op is Op.WEIGHT:
            lo.emit("get_rows_w", [val(table), c(val(ids))], out, type=table.dtype,
                    shape=table.shape)  # fmt: skip
        else:
            lo.emit("get_rows_f32", [c(val(table)), c(val(ids))], out)
        return out
    if op is Op.SET_ROWS:
        dst, ids, src = node.srcs
        d = val(dst)
        lo.emit("set_rows", [d, c(val(ids)), c(val(src))], None)
        return d
    if op is Op.MUL_MAT:
        return _lower_mul_mat(lo, node, val, None)
    if op is Op.ADD and fused in ("mmv_add0", "mmv_add1"):
        mm, res = node.srcs if fused == "mmv_add0" else node.srcs[::-1]
        return _lower_mul_mat(lo, mm, val, c(val(res)))
    if op in (Op.ADD, Op.MUL):
        if fused == "norm_mul":
            x, w = node.srcs
            norm = x
            out = lo.new(node.shape, F32)
            lo.emit("norm", [c(val(norm.srcs[0])), c(val(w))], out,
                    eps=norm.params["eps"], mode=0 if norm.op is Op.RMS_NORM else 1)  # fmt: skip
            return out
        a, b = c(val(node.srcs[0])), c(val(node.srcs[1]))
        out = lo.new(node.shape, F32)
        lo.emit("binary", [a, b], out, op=0 if op is Op.ADD else 1)
        return out
    if op in (Op.SCALE, Op.SILU, Op.GELU):
        out = lo.new(node.shape, F32)
        which = {Op.SCALE: 0, Op.SILU: 1, Op.GELU: 2}[op]
        lo.emit("unary", [c(val(node.srcs[0]))], out, op=which,
                scale=node.params.get("scale", 1.0))  # fmt: skip
        return out
    if op in (Op.SWIGLU, Op.GEGLU):
        out = lo.new(node.shape, F32)
        lo.emit("glu", [c(val(node.srcs[0])), c(val(node.srcs[1]))], out,
                op=0 if op is Op.SWIGLU else 1)  # fmt: skip
        return out
    if op in (Op.RMS_NORM, Op.NORM):
        out = lo.new(node.shape, F32)
        lo.emit("norm", [c(val(node.srcs[0]))], out, eps=node.params["eps"],
                mode=0 if op is Op.RMS_NORM else 1)  # fmt: skip
        return out
    if op is Op.ROPE:
        out = lo.new(node.shape, F32)
        lo.emit("rope", [c(val(s)) for s in node.srcs], out, **node.params)
        return out
    if op is Op.SOFT_MAX:
        out = lo.new(node.shape, F32)
        lo.emit("soft_max", [c(val(s)) for s in node.srcs], out, scale=node.params["scale"])
        return out
    if op is Op.FLASH_ATTN_EXT:
        q, k, v = node.srcs[:3]
        ins = [c(val(q)), val(k), val(v)]
        if len(node.srcs) > 3:
            ins.append(c(val(node.srcs[3])))
        out = lo.new(node.shape, F32)
        lo.emit("fattn", ins, out, scale=node.params["scale"], softcap=node.params["softcap"])
        return out
    if op is Op.ARGMAX:
        out = lo.new(node.shape, I32)
        lo.emit("argmax", [c(val(node.srcs[0]))], out)
        return out
    raise NotImplementedError(f"no CUDA lowering for {op.value}")


def _lower_mul_mat(lo: _Lowerer, node: Tensor, val, residual: Val | None) -> Val:
    a, b = node.srcs
    bv = lo.contiguous(val(b))
    out = lo.new(node.shape, F32)
    k = a.shape[-1]
    t = math.prod(b.shape[:-1])
    if a.op is Op.WEIGHT and len(a.shape) == 2:
        m = a.shape[0]
        params = dict(type=a.dtype, m=m, k=k, t=t, row_bytes=a.dtype.row_nbytes(k))
        ins = [val(a), bv] + ([residual] if residual is not None else [])
        if t <= _mmv_max_t(a.dtype):
            lo.emit("mmv", ins, out, **params)
        else:
            step = lo.emit("gemm", ins, out, **params)
            step.temps = [lo.temp(m * k * 2), lo.temp(t * k * 2)]
        return out
    av = lo.contiguous(val(a))
    n_a = math.prod(a.shape[:-2])
    n_b = math.prod(b.shape[:-2])
    lo.emit("mm_act", [av, bv], out, nb=n_b, r=n_b // n_a, t=b.shape[-2], m=a.shape[-2], k=k)
    return out


def _liveness(storages: list[Storage], steps: list[Step], outputs: dict[str, Val]) -> None:
    for i, step in enumerate(steps):
        for v in step.ins:
            storages[v.storage].last = max(storages[v.storage].last, i)
        for v in [step.out, *step.params.get("outs", ())]:
            if v is not None and storages[v.storage].first < 0:
                storages[v.storage].first = i
        nrm = step.params.get("norm")  # a norm folded into an mmvq: writes its q8 (and f32) form
        if nrm is not None:
            if storages[nrm["q8"]].first < 0:
                storages[nrm["q8"]].first = i
            storages[nrm["q8"]].last = max(storages[nrm["q8"]].last, i)
            if nrm["y"] is not None and storages[nrm["y"].storage].first < 0:
                storages[nrm["y"].storage].first = i
            if nrm["w"] is not None:
                storages[nrm["w"].storage].last = max(storages[nrm["w"].storage].last, i)
        xf = step.params.get("xf")  # f32 activations an mmvq quantizes itself
        if xf is not None:
            storages[xf.storage].last = max(storages[xf.storage].last, i)
        q8 = step.params.get("q8")
        if q8 is not None:  # written by quant_q8 / norm_q8 / fattn, read by mmvq
            if step.op in ("quant_q8", "norm_q8", "fattn") and storages[q8].first < 0:
                storages[q8].first = i
            storages[q8].last = max(storages[q8].last, i)
        q8out = step.params.get("q8out")  # a glu mat-vec's q8 output
        if q8out is not None:
            if storages[q8out].first < 0:
                storages[q8out].first = i
            storages[q8out].last = max(storages[q8out].last, i)
        for sid in step.temps:
            storages[sid].first = storages[sid].last = i
    for v in outputs.values():
        storages[v.storage].last = 1 << 40


def assign_offsets(storages: list[Storage]) -> int:
    """Place every arena storage by liveness (first fit, freed after its last reader); returns the
    arena's size in bytes. A storage is allocated before the inputs of its step are freed, so a
    kernel never reads and writes one buffer."""
    arena = [i for i, s in enumerate(storages) if s.kind == "arena" and s.first >= 0]
    by_first: dict[int, list[int]] = {}
    by_last: dict[int, list[int]] = {}
    for i in arena:
        s = storages[i]
        by_first.setdefault(s.first, []).append(i)
        by_last.setdefault(max(s.last, s.first), []).append(i)
    free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
    top = 0
    for step in sorted(set(by_first) | set(by_last)):
        for i in by_first.get(step, []):
            size = -(-storages[i].nbytes // ALIGN) * ALIGN
            for j, (off, sz) in enumerate(free):
                if sz >= size:
                    storages[i].offset = off
                    if sz == size:
                        free.pop(j)
                    else:
                        free[j] = (off + size, sz - size)
                    break
            else:
                if free and free[-1][0] + free[-1][1] == top:  # grow the last free block
                    off, _ = free.pop()
                    storages[i].offset = off
                    top = off + size
                else:
                    storages[i].offset = top
                    top += size
        for i in by_last.get(step, []):
            size = -(-storages[i].nbytes // ALIGN) * ALIGN
            free.append((storages[i].offset, size))
            free.sort()
            merged: list[tuple[int, int]] = []
            for off, sz in free:
                if merged and merged[-1][0] + merged[-1][1] == off:
                    merged[-1] = (merged[-1][0], merged[-1][1] + sz)
                else:
                    merged.append((off, sz))
            free = merged
    return top


def q8_layout(n: int) -> tuple[int, int]:
    """(offset of the per-block (scale, sum) pairs, total bytes) of n activations as q8."""
    dso = -(-n // ALIGN) * ALIGN
    return dso, dso + (n // 32) * 8


def _same(a: Val, b: Val) -> bool:
    return a.storage == b.storage and a.offset == b.offset and a.n == b.n


def _attention_takes_new_row(rope_qkv: Step, fattn: Step) -> bool:
    """One token whose roped q only the attention reads, and caches laid out [cell, head, dim]
    as the attention's K and V views: the attention kernel can rope and store the row itself."""
    q, k, v = fattn.ins[:3]
    kc, vc, ids = rope_qkv.ins[-3:]
    t, _, d = q.shape
    hk = k.shape[1]
    vrow = rope_qkv.ins[2].n // ids.n
    return (
        t == 1 and ids.n == 1 and _same(fattn.ins[0], rope_qkv.out) and vrow == hk * d
        and k.storage == kc.storage and k.offset == kc.offset and v.storage == vc.storage
        and v.offset == vc.offset and tuple(k.strides[:2]) == (hk * d, d)
        and tuple(v.strides[:2]) == (hk * d, d)
    )  # fmt: skip


def _decode_fusions(lo: _Lowerer, outputs: dict[str, Val]) -> None:
    """Small-batch rewrites of the step list: mat-vecs of the legacy quants read activations
    quantized once to q8 (by the norm that produces them, or a quant_q8 step); mat-vecs that
    share those activations run as one launch (q/k/v), gate/up + GLU as one, and rope(q),
    rope(k) + the two KV-cache writes of a layer as one."""
    steps = lo.steps
    q8_of: dict[tuple[int, int, int], int] = {}
    out_steps: list[Step] = []
    for st in steps:
        if st.op == "mmv" and st.params["type"] in Q8_TYPES:
            x = st.ins[1]
            key = (x.storage, x.offset, x.n)
            sid = q8_of.get(key)
            if sid is None:
                sid = lo.storage("arena", q8_layout(x.n)[1])
                q8_of[key] = sid
                writers = (p for p in reversed(out_steps) if p.out is not None)
                prod = next((p for p in writers if p.out.storage == x.storage), None)
                fits = (prod is not None and _same(prod.out, x)
                        and prod.out.shape[-1] % 32 == 0)  # fmt: skip
                if fits and prod.op == "norm":
                    prod.op = "norm_q8"
                    prod.params["q8"] = sid
                elif fits and prod.op == "fattn":  # attention writes its output as q8 too
                    prod.params["q8"] = sid
                else:
                    out_steps.append(Step("quant_q8", [x], None, {"q8": sid, "n": x.n}))
            st.op = "mmvq"
            st.params["q8"] = sid
            st.ins = [st.ins[0], *st.ins[2:]]
        out_steps.append(st)
    steps = out_steps

    def reads(sid: int, skip: Step | None = None) -> int:
        n = sum(1 for s in steps if s is not skip for v in s.ins if v.storage == sid)
        return n + sum(1000 for v in outputs.values() if v.storage == sid)

    # gate/up + glu
    i = 0
    fused: list[Step] = []
    while i < len(steps):
        a = steps[i]
        if (i + 2 < len(steps) and a.op == "mmvq" and steps[i + 1].op == "mmvq"
                and steps[i + 2].op == "glu"):  # fmt: skip
            b, g = steps[i + 1], steps[i + 2]
            pa, pb = a.params, b.params
            plain = len(a.ins) == 1 and len(b.ins) == 1
            same = (pa["q8"] == pb["q8"] and pa["type"] == pb["type"] and pa["k"] == pb["k"]
                    and pa["m"] == pb["m"] and a.ins[0].dtype == b.ins[0].dtype)  # fmt: skip
            if plain and same:
                order = None
                if _same(g.ins[0], a.out) and _same(g.ins[1], b.out):
                    order = (a, b)
                elif _same(g.ins[0], b.out) and _same(g.ins[1], a.out):
                    order = (b, a)
                if order and reads(a.out.storage) == 1 and reads(b.out.storage) == 1:
                    gate, up = order
                    params = dict(gate.params, glu=g.params["op"])
                    fused.append(Step("mmvq", [gate.ins[0], up.ins[0]], g.out, params))
                    i += 3
                    continue
        fused.append(a)
        i += 1
    steps = fused

    # the quantization of a glu's output for the next mat-vec: done by the glu mat-vec itself
    # (each group of 32 rows by the block that completes it), which saves a launch per layer
    kept: list[Step] = []
    for st in steps:
        prev = kept[-1] if kept else None
        if (GLU_Q8 and st.op == "quant_q8" and prev is not None and prev.op == "mmvq"
                and "glu" in prev.params and _same(prev.out, st.ins[0])
                and prev.params["m"] % 32 == 0):  # fmt: skip
            prev.params["q8out"] = st.params["q8"]
            continue
        kept.append(st)
    steps = kept

    # mat-vecs over the same activations: one launch for up to three
    merged: list[Step] = []
    for st in steps:
        prev = merged[-1] if merged else None
        if (st.op == "mmvq" and prev is not None and prev.op == "mmvq" and len(st.ins) == 1
                and "glu" not in st.params and "glu" not in prev.params
                and prev.params["q8"] == st.params["q8"]
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
        merged.append(st)
    steps = merged

    # rope(q), rope(k), set_rows(K cache, rope(k)), set_rows(V cache, v)
    out: list[Step] = []
    i = 0
    while i < len(steps):
        w = steps[i : i + 4]
        if len(w) == 4 and [s.op for s in w] == ["rope", "rope", "set_rows", "set_rows"]:
            r1, r2, s1, s2 = w
            same_rope = (
                {k: v for k, v in r1.params.items()} == {k: v for k, v in r2.params.items()}
                and _same(r1.ins[1], r2.ins[1]) and len(r1.ins) == len(r2.ins)
                and (len(r1.ins) < 3 or _same(r1.ins[2], r2.ins[2]))
                and _same(s1.ins[1], s2.ins[1])
            )  # fmt: skip
            match = None
            for rk, rq in ((r1, r2), (r2, r1)):
                for sk, sv in ((s1, s2), (s2, s1)):
                    if _same(sk.ins[2], rk.out) and not _same(sv.ins[2], rq.out):
                        match = (rq, rk, sk, sv)
            if ROPE_QKV and same_rope and match is not None:
                rq, rk, sk, sv = match
                if (
                    reads(rk.out.storage, skip=sk) == 0
                    and rq.ins[0].shape[-1] == rk.ins[0].shape[-1]
                ):
                    out.append(Step("rope_qkv", [rq.ins[0], rk.ins[0], sv.ins[2], *rq.ins[1:],
                                                 sk.ins[0], sv.ins[0], sk.ins[1]], rq.out,
                                    dict(rq.params)))  # fmt: skip
                    i += 4
                    continue
        out.append(steps[i])
        i += 1
    steps = out

    # a one-token step's attention ropes q and k itself and writes the new K/V rows (the
    # rope_qkv launch goes): the new row's values come from shared memory, the rest from the cache
    if ROPE_ATTN:
        attn: list[Step] = []
        for st in steps:
            prev = attn[-1] if attn else None
            if (st.op == "fattn" and prev is not None and prev.op == "rope_qkv"
                    and _attention_takes_new_row(prev, st)
                    and reads(prev.out.storage, skip=st) == 0):  # fmt: skip
                q, kn, vn, pos = prev.ins[:4]
                ff = prev.ins[4:5] if len(prev.ins) == 8 else []
                kc, vc, ids = prev.ins[-3:]
                st.params["nr"] = len(st.ins)  # ins from here: the new row and where it goes
                st.params["rope"] = dict(prev.params)
                st.ins = [q, *st.ins[1:], kn, vn, pos, ids, kc, vc, *ff]
                attn[-1] = st
                continue
            attn.append(st)
        steps = attn

    # one-token mat-vecs over small f32 activations quantize them in their own prologue (into
    # shared memory), which saves the quant_q8 launch
    kept: list[Step] = []
    for st in steps:
        if st.op == "quant_q8" and MMVQ_XF_MAX_K > 0:
            users = [u for u in steps if u.op == "mmvq" and u.params.get("q8") == st.params["q8"]]
            x = st.ins[0]
            small = x.n <= MMVQ_XF_MAX_K and x.dtype == F32 and x.contiguous and x.offset % 4 == 0
            if users and small and all(u.params["t"] == 1 for u in users):
                for u in users:
                    u.params["xf"] = x
                    del u.params["q8"]
                continue
        kept.append(st)
    steps = kept

    for st in steps:  # a norm whose f32 output only fed mat-vecs need not write it
        if st.op == "norm_q8":
            st.params["y_unused"] = reads(st.out.storage) == 0

    # a one-token norm right after the mat-vec (+ residual) that produces its input: the mat-vec's
    # last block computes it, which saves the norm's launch
    folded: list[Step] = []
    for st in steps:
        prev = folded[-1] if folded else None
        if (NORM_FOLD and st.op == "norm_q8" and prev is not None and prev.op == "mmvq"
                and "outs" not in prev.params and "glu" not in prev.params
                and "norm" not in prev.params and prev.params["t"] == 1
                and _same(prev.out, st.ins[0]) and st.ins[0].n == prev.params["m"]):  # fmt: skip
            prev.params["norm"] = dict(
                w=st.ins[1] if len(st.ins) > 1 else None, eps=st.params["eps"],
                mode=st.params["mode"], q8=st.params["q8"],
                y=None if st.params.get("y_unused") else st.out,
            )  # fmt: skip
            continue
        folded.append(st)
    lo.steps[:] = folded
