"""What the Vulkan backend runs: ``supports(node)``, the answer behind ``supports_op``."""

from __future__ import annotations

from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Op

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
# weight types the shaders read in their ggml blocks (quant.glsl)
BLOCK_TYPES = frozenset({
    F32, F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1,
    GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})  # fmt: skip
FLOATS = (F32, F16)
MAX_HEAD_DIM = 256
ELEMENTWISE = {Op.ADD, Op.MUL, Op.SCALE, Op.SILU, Op.GELU, Op.SWIGLU, Op.GEGLU, Op.CONT, Op.CPY}


def supports(node: Any) -> bool:
    op, srcs = node.op, node.srcs
    if op in (Op.WEIGHT, Op.INPUT, Op.STATE):
        return True
    if op in (Op.VIEW, Op.RESHAPE, Op.PERMUTE):
        return len(node.shape) <= 4
    if op in ELEMENTWISE:
        return len(node.shape) <= 4 and all(s.dtype in FLOATS for s in srcs)
    if op in (Op.RMS_NORM, Op.NORM, Op.SOFT_MAX, Op.ARGMAX):
        return all(s.dtype == F32 for s in srcs)
    if op is Op.ROPE:
        return node.shape[2] % 2 == 0 and all(s.dtype in (F32, I32) for s in srcs)
    if op is Op.GET_ROWS:
        table = srcs[0]
        ok = table.dtype in BLOCK_TYPES if table.op is Op.WEIGHT else table.dtype in FLOATS
        return ok and node.shape[1] % 4 == 0
    if op is Op.SET_ROWS:
        dst, _, src = srcs
        width = 1
        for d in dst.shape[1:]:
            width *= d
        return dst.dtype in FLOATS and src.dtype == F32 and (dst.dtype == F32 or width % 2 == 0)
    if op is Op.MUL_MAT:
        a, b = srcs
        if b.dtype != F32:
            return False
        if a.op is Op.WEIGHT and len(a.shape) == 2:
            return a.dtype in BLOCK_TYPES and a.shape[1] % 4 == 0
        return a.dtype in FLOATS
    if op is Op.FLASH_ATTN_EXT:
        q, k, v = srcs[:3]
        return (
            q.dtype == F32 and k.dtype in FLOATS and v.dtype in FLOATS
            and q.shape[2] <= MAX_HEAD_DIM and v.shape[2] <= MAX_HEAD_DIM
            and q.shape[2] % 2 == 0
        )  # fmt: skip
    return False
