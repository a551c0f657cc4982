"""Lowering a graph to a list of kernel steps over views of planned storage: what the CUDA and
OpenCL backends share (each then turns a step into its own launch).

``lower_steps(graph, supports, mat_vec_max_t)`` fuses the graph for the device (fuse.py), walks
the nodes once and returns a ``Plan``: storages (weights, state, inputs and activation ranges),
views (views, reshapes and permutes cost nothing; strided operands get an explicit ``copy``
step) and steps, one kernel family each, with the liveness of every storage, which
``plan_arena`` turns into one arena. A step's kind names its kernel family:

| kind | ins | params |
|---|---|---|
| copy | [src] (strided) | mode: 0 same 4-byte type, 1 same 2-byte type, 2 to f16, 3 to f32 |
| binary | [a, b] (b broadcast) | op: 0 add, 1 mul |
| unary | [x] | op: 0 scale, 1 silu, 2 gelu; scale |
| glu | [gate, up] | op: 0 swiglu, 1 geglu |
| norm | [x] or [x, weight] | eps; mode: 0 rms, 1 mean-centred |
| rope | [x, pos] or [x, pos, factors] | the rope node's params |
| soft_max | [x] or [x, mask] | scale |
| fattn | [q, k, v] or [q, k, v, mask] | scale, softcap |
| argmax | [x] | |
| get_rows_w / get_rows_f32 | [table, ids] | type, shape (of a weight table) |
| set_rows | [dst, ids, src] (out None: dst written in place) | |
| mm_act | [a, b] (activations x activations) | nb, r (broadcast), t, m, k |
| mmv / gemm | [weight, x] or [weight, x, residual] | type, m, k, t, row_bytes |

passes.py rewrites the step list for small batches (q8 activations, merged mat-vecs...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower.fuse import fuse
from llmrt.lower.view import Storage, View, alias

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
ITEMSIZE = {F32: 4, F16: 2, I32: 4, BF16: 2}
# weight types whose ggml blocks the GPU backends' kernels read as they are
BLOCK_TYPES = frozenset({
    F32, F16, BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
# the legacy quants, whose mat-vecs may run on activations quantized once to q8 blocks (exact
# int8 dot products, as ggml's mmvq): passes.q8_activations' `types`
Q8_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0})
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
# element-wise ops: their step kind and its params["op"]
ELEMENTWISE = {
    **{op: ("binary", i) for i, op in enumerate((Op.ADD, Op.MUL))},
    **{op: ("unary", i) for i, op in enumerate((Op.SCALE, Op.SILU, Op.GELU))},
    **{op: ("glu", i) for i, op in enumerate((Op.SWIGLU, Op.GEGLU))},
}


@dataclass
class Step:
    op: str
    ins: list[View]
    out: View | None
    params: dict[str, Any] = field(default_factory=dict)
    temps: list[Storage] = field(default_factory=list)  # scratch used only by this step

    def arg(self, i: int) -> View | None:
        """Operand `i`, or None where the step has fewer (an optional operand left out)."""
        return self.ins[i] if len(self.ins) > i else None


@dataclass
class Plan:
    storages: list[Storage]
    steps: list[Step]
    inputs: dict[str, View]
    outputs: dict[str, View]

    def reads(self, st: Storage, skip: Step | None = None) -> int:
        """Readers of `st` among the steps as they are now (but `skip`); an output counts 1000:
        the `reads` that the step-list passes take."""
        return count_reads(self.steps, self.outputs, st, skip)


def _nbytes(dtype: GGMLType, n: int) -> int:
    return ITEMSIZE.get(dtype, 4) * n


class StepLowering:
    """The storages, views and steps made so far, and the helpers a node's lowering uses."""

    def __init__(
        self,
        mat_vec_max_t: Callable[[GGMLType], int],
        act_align: int = 1,
        strided_elementwise: bool = False,
    ) -> None:
        self.mat_vec_max_t = mat_vec_max_t
        self.act_align = act_align  # element alignment of a weight product's activations
        self.strided_elementwise = strided_elementwise  # see lower_steps
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

    def contiguous(self, v: View, align: int = 1) -> View:
        if v.contiguous and v.offset % align == 0:
            return v
        out = self.new(v.shape, v.dtype)
        self.emit("copy", [v], out, mode=0 if ITEMSIZE[v.dtype] == 4 else 1)
        return out

    def strided_note(self, node: Tensor) -> dict[str, bool]:
        """With `strided_elementwise`, the param ``strided``: whether node's operands are copied
        first (prologue.py fuses no such step)."""
        if not self.strided_elementwise:
            return {}
        return {"strided": not all(self.of(s).contiguous for s in node.srcs)}

    def out(self, node: Tensor, kind: str, ins: list[View], **params: Any) -> View:
        """A step writing node's value into a new activation range."""
        out = self.new(node.shape, node.dtype)
        self.emit(kind, ins, out, **params)
        return out


def step_supports(
    weight_types: frozenset[GGMLType],
    mat_vec_max_t: Callable[[GGMLType], int],
    attention: Callable[[Tensor], bool],
) -> Callable[[Tensor], bool]:
    """The `supports_op` of a backend whose kernels are the step kinds above: weight products
    and lookups read blocks of `weight_types` (rows a multiple of 32), a product's residual is
    fused only into mat-vecs (at most `mat_vec_max_t(type)` token rows), activations are f32,
    caches f32 or f16; `attention` says which attentions its kernel takes."""

    def f32(n: Tensor) -> bool:
        return all(x.dtype == F32 for x in n.srcs)

    def mat_vec(mm: Tensor) -> bool:
        a, b = mm.srcs[:2]
        t = math.prod(b.shape[:-1])
        return a.op is Op.WEIGHT and len(a.shape) == 2 and t <= mat_vec_max_t(a.dtype)

    def get_rows(n: Tensor) -> bool:
        t = n.srcs[0]
        if t.op is Op.WEIGHT:
            return t.dtype in weight_types and t.shape[1] % 32 == 0
        return t.dtype == F32

    def mul_mat(n: Tensor) -> bool:
        a, b = n.srcs[:2]
        if b.dtype != F32:
            return False
        if len(n.srcs) == 3:  # the fused residual, in the mat-vec's epilogue
            return mat_vec(n) and n.srcs[2].dtype == F32 and a.dtype in weight_types
        if a.op is Op.WEIGHT and len(a.shape) == 2:
            return a.dtype in weight_types and a.shape[1] % 32 == 0
        return a.dtype in (F32, F16)

    table: dict[Op, Callable[[Tensor], bool]] = {
        **dict.fromkeys((*LEAVES, Op.VIEW, Op.RESHAPE, Op.PERMUTE), lambda n: True),
        Op.CONT: lambda n: len(n.shape) <= 4 and n.srcs[0].dtype in (F32, F16, I32),
        Op.CPY: lambda n: len(n.shape) <= 4 and n.srcs[0].dtype in (F32, F16)
        and n.dtype in (F32, F16),
        Op.GET_ROWS: get_rows,
        Op.SET_ROWS: lambda n: n.srcs[0].dtype in (F32, F16) and n.srcs[2].dtype == F32,
        Op.MUL_MAT: mul_mat,
        **dict.fromkeys((Op.ADD, Op.MUL), lambda n: len(n.shape) <= 4 and f32(n)),
        **dict.fromkeys((Op.SCALE, Op.SILU, Op.GELU, Op.SWIGLU, Op.GEGLU, Op.RMS_NORM, Op.NORM),
                        f32),
        Op.ROPE: lambda n: n.srcs[0].dtype == F32 and len(n.srcs[0].shape) == 3
        and all(x.dtype in (F32, I32) for x in n.srcs),
        Op.SOFT_MAX: lambda n: len(n.srcs) == 1 or tuple(n.srcs[1].shape) == tuple(n.shape[-2:]),
        Op.FLASH_ATTN_EXT: attention,
        Op.ARGMAX: lambda n: n.srcs[0].dtype == F32,
    }  # fmt: skip

    def supports(node: Tensor) -> bool:
        check = table.get(node.op)
        return check is not None and check(node)

    return supports


def lower_steps(
    graph: Graph,
    supports: Callable[[Tensor], bool],
    mat_vec_max_t: Callable[[GGMLType], int],
    lowerings: Mapping[Op, Callable[[StepLowering, Tensor], View]] | None = None,
    act_align: int = 1,
    strided_elementwise: bool = False,
) -> tuple[Plan, StepLowering]:
    """Steps for `graph` on a device whose `supports` takes its nodes (and decides fusions): a
    weight product of at most `mat_vec_max_t(weight type)` token rows is an ``mmv`` step, a
    longer one a ``gemm`` (its activations copied where their offset is not a multiple of
    `act_align`); `lowerings` replaces the default lowering of some ops. With
    `strided_elementwise` the element-wise kernels read strided operands as they are, and the
    other steps copy theirs (``StepLowering.strided_note``). Liveness is left to the caller
    (after its passes): ``liveness(plan.steps, plan.outputs)``."""
    graph = fuse(graph, supports)
    lo = StepLowering(mat_vec_max_t, act_align, strided_elementwise)
    table = {**LOWERINGS, **(lowerings or {})}
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
            lowering = table.get(node.op)
            if lowering is None:
                raise NotImplementedError(f"no step lowering for {node.op.value}")
            lo.views[id(node)] = lowering(lo, node)
    outputs = {name: lo.c(t) for name, t in graph.outputs.items()}
    return Plan(lo.storages, lo.steps, inputs, outputs), lo


def _copy(lo: StepLowering, node: Tensor) -> View:
    src = lo.of(node.srcs[0])
    if src.dtype == node.dtype:
        mode = 0 if ITEMSIZE[src.dtype] == 4 else 1
    else:
        mode = 2 if node.dtype == F16 else 3
    return lo.out(node, "copy", [src], mode=mode)


def _lower_get_rows(lo: StepLowering, node: Tensor) -> View:
    table, ids = node.srcs
    if table.op is Op.WEIGHT:
        return lo.out(node, "get_rows_w", [lo.of(table), lo.c(ids)], type=table.dtype,
                      shape=table.shape)  # fmt: skip
    return lo.out(node, "get_rows_f32", [lo.c(table), lo.c(ids)])


def _lower_set_rows(lo: StepLowering, node: Tensor) -> View:
    dst, ids, src = node.srcs
    d = lo.of(dst)
    lo.emit("set_rows", [d, lo.c(ids), lo.c(src)], None)
    return d


def lower_mul_mat(lo: StepLowering, node: Tensor) -> View:
    a, b = node.srcs[:2]
    residual = lo.c(node.srcs[2]) if len(node.srcs) == 3 else None
    bv = lo.c(b)
    out = lo.new(node.shape, F32)
    k = a.shape[-1]
    t = math.prod(b.shape[:-1])
    if a.op is Op.WEIGHT and len(a.shape) == 2:
        m = a.shape[0]
        params = dict(type=a.dtype, m=m, k=k, t=t, row_bytes=a.dtype.row_nbytes(k))
        bv = lo.contiguous(bv, lo.act_align)
        ins = [lo.of(a), bv] + ([residual] if residual is not None else [])
        if t <= lo.mat_vec_max_t(a.dtype):
            lo.emit("mmv", ins, out, **params)
        else:
            lo.emit("gemm", ins, out, **params)
        return out
    n_a, n_b = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
    lo.emit("mm_act", [lo.c(a), bv], out, nb=n_b, r=n_b // n_a, t=b.shape[-2], m=a.shape[-2], k=k)
    return out


def _lower_norm(lo: StepLowering, node: Tensor) -> View:
    return lo.out(node, "norm", [lo.c(s) for s in node.srcs], eps=node.params["eps"],
                  mode=0 if node.op is Op.RMS_NORM else 1, **lo.strided_note(node))  # fmt: skip


def _lower_elementwise(lo: StepLowering, node: Tensor) -> View:
    kind, op = ELEMENTWISE[node.op]
    read = lo.of if lo.strided_elementwise else lo.c
    scale = {"scale": node.params.get("scale", 1.0)} if kind == "unary" else {}
    return lo.out(node, kind, [read(s) for s in node.srcs], op=op, **scale)


LOWERINGS: dict[Op, Callable[[StepLowering, Tensor], View]] = {
    Op.CONT: _copy,
    Op.CPY: _copy,
    Op.GET_ROWS: _lower_get_rows,
    Op.SET_ROWS: _lower_set_rows,
    Op.MUL_MAT: lower_mul_mat,
    **dict.fromkeys(ELEMENTWISE, _lower_elementwise),
    Op.RMS_NORM: _lower_norm,
    Op.NORM: _lower_norm,
    Op.ROPE: lambda lo, n: lo.out(n, "rope", [lo.c(s) for s in n.srcs], **n.params,
                                  **lo.strided_note(n)),
    Op.SOFT_MAX: lambda lo, n: lo.out(n, "soft_max", [lo.c(s) for s in n.srcs],
                                      scale=n.params["scale"]),
    Op.FLASH_ATTN_EXT: lambda lo, n: lo.out(
        n, "fattn", [lo.c(n.srcs[0]), lo.of(n.srcs[1]), lo.of(n.srcs[2])]
        + [lo.c(s) for s in n.srcs[3:]], scale=n.params["scale"], softcap=n.params["softcap"]),
    Op.ARGMAX: lambda lo, n: lo.out(n, "argmax", [lo.c(n.srcs[0])]),
}  # fmt: skip


def liveness(steps: list[Step], outputs: dict[str, View]) -> None:
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
        if q8 is not None:  # written by quant_q8 / norm_q8 / fattn / glu, read by mmvq
            if step.op in ("quant_q8", "norm_q8", "fattn", "glu"):
                writes(q8, i)
            reads(q8, i)
        for st in step.params.get("also_writes", ()):  # a step taken into this one (epilogues)
            writes(st, i)
        for st in step.params.get("also_reads", ()):
            reads(st, i)
        for st in step.temps:
            st.first = st.last = i
    for v in outputs.values():
        v.storage.last = 1 << 40


def count_reads(
    steps: list[Step], outputs: Mapping[str, View], st: Storage, skip: Step | None = None
) -> int:
    """Readers of `st` among `steps` (but `skip`); a graph output counts 1000."""
    n = sum(1 for s in steps if s is not skip for v in s.ins if v.storage is st)
    return n + sum(1000 for v in outputs.values() if v.storage is st)
