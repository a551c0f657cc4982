"""What the Vulkan shaders take (``supports``, the answer behind ``supports_op``), and the steps
they run (llmrt.lower's step lowering).

Weight products of the q8_0 family run on q8 activations (matvec_q8, all token rows on
lavapipe's per-row kernels, up to MAX_T_MATVEC on the GPU kernels); on the GPU kernels a norm, a
swiglu or split attention read only by such mat-vecs is left to their prologues, and their
ropes and KV-cache writes to their epilogues (matvec_q8p: llmrt.lower.prologue). Element-wise
ops read strided operands as they are. Measurements behind the constants are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower import View, passes, prologue
from llmrt.lower.steps import (
    BLOCK_TYPES,
    ELEMENTWISE,
    Q8_TYPES,
    Plan,
    Step,
    StepLowering,
    liveness,
    lower_steps,
)

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
FLOATS = (F32, F16)  # read as floats; BLOCK_TYPES' weights as ggml blocks (quant.glsl)
MAX_HEAD_DIM = 256
MAX_T_MATVEC = 8
ATTN_MAX_SPLITS = 64  # parts of one head group's attention over the KV length, at most
# workgroups attention aims at, one token's and a prompt's (benchmarks/vulkan_attn_splits.py;
# BENCHMARKS.md): a decode step's grouped heads (the 1B's and 8B's 8 groups) reach 64 parts first
ATTN_WORKGROUPS, ATTN_WORKGROUPS_PROMPT = 2048, 512
ATTN_ROWS_MAX = 32768  # cache elements a head (keys x head size) for lavapipe's per-row kernel
PROLOGUE_BLOCKS = 512  # q8 blocks (t * k / 32) a matvec_q8p workgroup holds in shared memory
# Each matvec_q8p workgroup reads its activations' inputs whole: at most PROLOGUE_FLOATS f32
# values, and only in dispatches of at most PROLOGUE_SMALL rows or activation values (t * k);
# others keep a producer dispatch that writes q8 blocks (why: BENCHMARKS.md, tuning notes).
PROLOGUE_FLOATS = 20480
PROLOGUE_SMALL = 2048


def supports(node: Any) -> bool:
    """Whether the shaders compute `node` (its operands' types and shapes)."""
    op, srcs = node.op, node.srcs
    if op in (Op.WEIGHT, Op.INPUT, Op.STATE):
        return True
    if op in (Op.VIEW, Op.RESHAPE, Op.PERMUTE):
        return len(node.shape) <= 4
    if op in ELEMENTWISE or op in (Op.CONT, Op.CPY):
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
        width = math.prod(dst.shape[1:])
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
        heads = q.shape[2] <= MAX_HEAD_DIM and v.shape[2] <= MAX_HEAD_DIM and q.shape[2] % 2 == 0
        return q.dtype == F32 and k.dtype in FLOATS and v.dtype in FLOATS and heads
    return False


def fusable(node: Tensor, cpu: bool) -> bool:
    """Which fused nodes (llmrt.lower.fuse) the kernels take: a norm with an f32 weight
    (norm.comp), an integer mat-vec (matvec_q8.comp) adding a contiguous f32 residual in its
    epilogue."""
    if node.op in (Op.RMS_NORM, Op.NORM):
        x, w = node.srcs
        return x.dtype == F32 and w.op is Op.WEIGHT and w.dtype == F32 and w.strides == (1,)
    a, b, y = node.srcs
    if a.op is not Op.WEIGHT or a.dtype not in Q8_TYPES or len(a.shape) != 2:
        return False
    t = math.prod(b.shape) // a.shape[1]
    mat_vec = a.shape[1] % 32 == 0 and b.dtype == F32 and (cpu or t <= MAX_T_MATVEC)
    return mat_vec and y.dtype == F32 and y.shape == node.shape and y.is_contiguous


def prologue_fits(mv: Step, reads: int) -> bool:
    """Whether q8 mat-vec step `mv` can make its q8 blocks in a prologue reading `reads` f32
    values per activation value (matvec_q8p)."""
    m, k, t = mv.params["m"], mv.params["k"], mv.params["t"]
    small = min(m, t * k) <= PROLOGUE_SMALL and reads * t * k <= PROLOGUE_FLOATS
    return mv.params["type"] in Q8_TYPES and t * k // 32 <= PROLOGUE_BLOCKS and small


def attn_rows(cpu: bool, s: int, d: int) -> bool:
    """Whether attention takes the per-row kernel (lavapipe's): only for caches of at most
    ATTN_ROWS_MAX elements a head, past which lavapipe computes it wrong (nondeterministic
    garbage from about 42k: Gemma 3's 256-wide heads reach that at 164 cells)."""
    return cpu and s * d <= ATTN_ROWS_MAX


def attn_splits(cpu: bool, t: int, groups: int, s: int, d: int) -> tuple[int, int]:
    """Parts of the KV length that attention over `groups` head groups a token is split into,
    and keys per part: on the GPU kernels some ATTN_WORKGROUPS in all (a prompt's:
    ATTN_WORKGROUPS_PROMPT), parts of at least 32 keys (one workgroup per head group would walk
    its keys serially)."""
    if attn_rows(cpu, s, d):
        return 1, -(-s // 128) * 128
    target = ATTN_WORKGROUPS if t == 1 else ATTN_WORKGROUPS_PROMPT
    splits = max(1, min(-(-s // 32), -(-target // (t * groups)), ATTN_MAX_SPLITS))
    per = -(-s // splits)
    chunk = -(-per // 32) * 32
    return -(-s // chunk), chunk  # none left empty


def _attention(lo: StepLowering, n: Tensor, cpu: bool) -> View:
    q, k, v = lo.c(n.srcs[0]), lo.of(n.srcs[1]), lo.of(n.srcs[2])
    k, v = (x if x.strides[1:] == (x.shape[2], 1) else lo.contiguous(x) for x in (k, v))
    (t, hq, dk), (s, _, dv) = q.shape, v.shape
    heads = passes.attention_heads(hq, k.shape[1])  # query heads a workgroup takes
    splits, chunk = attn_splits(cpu, t, hq // heads, s, max(dk, dv))
    out = lo.out(n, "fattn", [q, k, v, *(lo.c(m) for m in n.srcs[3:])], splits=splits,
                 chunk=chunk, heads=heads, scale=n.params["scale"],
                 softcap=n.params["softcap"])  # fmt: skip
    if splits > 1:  # the parts, merged by attn_combine
        lo.steps[-1].temps = [lo.storage("arena", 4 * t * hq * splits * (dv + 2))]
    return out


def _writes_q8(p: Step) -> bool:
    """Producers that write their output as q8 blocks as well: a norm, a swiglu (by
    quantize_q8.comp), split attention's merge."""
    return p.op == "norm" or prologue.swiglu(p, 4) or (p.op == "fattn" and p.params["splits"] > 1)


def lower(graph: Graph, cpu: bool, max_range: int) -> Plan:
    """Steps for `graph` on lavapipe's per-row kernels (`cpu`) or the GPU's; a weight of more
    than `max_range` bytes is read through several bindings."""
    max_t = (1 << 30) if cpu else MAX_T_MATVEC
    attention = {Op.FLASH_ATTN_EXT: lambda lo, n: _attention(lo, n, cpu)}
    plan, lo = lower_steps(graph, lambda n: fusable(n, cpu), lambda dtype: max_t, attention,
                           act_align=4, strided_elementwise=True)  # fmt: skip
    steps, reads = plan.steps, plan.reads
    if not cpu:
        steps[:] = prologue.producers_in_prologues(steps, reads, prologue_fits)
    plain = None if cpu else lambda mv: prologue_fits(mv, 1)
    steps[:] = passes.q8_activations(steps, lo.storage, Q8_TYPES, _writes_q8, plain)
    for i, st in enumerate(steps):  # the others make q8 blocks of their activations themselves
        if st.op == "mmv" and st.params["type"] in Q8_TYPES:
            steps[i] = prologue.prologue_step(st, {"mode": 1}, st.ins[1], st.ins[1])
    if not cpu:
        one = lambda mv: mv.params["row_bytes"] * mv.params["m"] <= max_range  # noqa: E731
        steps[:] = prologue.epilogues(steps, reads, one)
    steps[:] = prologue.rope_into_cache(steps, reads)
    liveness(steps, plan.outputs)
    return plan
