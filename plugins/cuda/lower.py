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
MMV_MAX_T = 8  # mul_mat with at most this many token rows runs as matrix-vector kernels
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
    return a.op is Op.WEIGHT and len(a.shape) == 2 and math.prod(b.shape[:-1]) <= MMV_MAX_T


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
        if t <= MMV_MAX_T:
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
        if step.out is not None and storages[step.out.storage].first < 0:
            storages[step.out.storage].first = i
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
