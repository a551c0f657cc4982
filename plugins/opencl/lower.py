"""What the OpenCL kernels take, and the steps they run (llmrt.lower's step lowering).

A weight product of up to MMV_MAX_T token rows is a mat-vec (``mmv``, the residual add in its
epilogue), a longer one a tiled ``gemm`` reading the blocks as stored; a norm takes its weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower.steps import Plan, liveness, lower_steps

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
WEIGHT_TYPES = frozenset({
    F32, F16, BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
MMV_MAX_T = 8
MAX_HEAD_DIM = 256
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)


def _mat_vec(mm: Tensor) -> bool:
    a, b = mm.srcs[:2]
    return a.op is Op.WEIGHT and len(a.shape) == 2 and math.prod(b.shape[:-1]) <= MMV_MAX_T


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
    if len(node.srcs) == 3:  # the fused residual, in the mat-vec's epilogue
        return _mat_vec(node) and node.srcs[2].dtype == F32 and a.dtype in WEIGHT_TYPES
    if a.op is Op.WEIGHT and len(a.shape) == 2:
        return a.dtype in WEIGHT_TYPES and a.shape[1] % 32 == 0
    return a.dtype in (F32, F16)


def _attention(node: Tensor) -> bool:
    q, k, v = node.srcs[:3]
    return (
        q.shape[2] <= MAX_HEAD_DIM and v.shape[2] <= MAX_HEAD_DIM and k.dtype == v.dtype
        and q.shape[2] % 4 == 0 and v.shape[2] % 4 == 0
        and k.dtype in (F32, F16) and k.strides[-1] == 1 and v.strides[-1] == 1
    )  # fmt: skip


SUPPORTS: dict[Op, Callable[[Tensor], bool]] = {
    **dict.fromkeys((*LEAVES, Op.VIEW, Op.RESHAPE, Op.PERMUTE), lambda n: len(n.shape) <= 4),
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


def lower(graph: Graph) -> Plan:
    plan, _ = lower_steps(graph, supports, lambda dtype: MMV_MAX_T)
    liveness(plan.steps, plan.outputs)
    return plan
