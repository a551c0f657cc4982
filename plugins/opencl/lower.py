"""What the OpenCL kernels take, and the steps they run (llmrt.lower's step lowering).

A weight product of up to MMV_MAX_T token rows is a mat-vec (``mmv``, the residual add in its
epilogue), a longer one a tiled ``gemm`` reading the blocks as stored; a norm takes its weight.
"""

from __future__ import annotations

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower.steps import Plan, liveness, lower_steps, step_supports

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
WEIGHT_TYPES = frozenset({
    F32, F16, BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
MMV_MAX_T = 8
MAX_HEAD_DIM = 256
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)


def _attention(node: Tensor) -> bool:
    q, k, v = node.srcs[:3]
    return (
        q.shape[2] <= MAX_HEAD_DIM and v.shape[2] <= MAX_HEAD_DIM and k.dtype == v.dtype
        and q.shape[2] % 4 == 0 and v.shape[2] % 4 == 0
        and k.dtype in (F32, F16) and k.strides[-1] == 1 and v.strides[-1] == 1
    )  # fmt: skip


# what the kernels implement; drives placement, fusion and conformance skips
supports = step_supports(WEIGHT_TYPES, lambda dtype: MMV_MAX_T, _attention)


def lower(graph: Graph) -> Plan:
    plan, _ = lower_steps(graph, supports, lambda dtype: MMV_MAX_T)
    liveness(plan.steps, plan.outputs)
    return plan
