"""What the CUDA kernels take, and the steps they run: pure Python, no cupy (tested without a GPU).

`lower(graph)` is llmrt.lower's step lowering (views, fusion, steps, liveness) with this
backend's choices: integer mat-vecs (``mmvq``) on q8 activations for the legacy quants up to
MMVQ_MAX_T token rows, float mat-vecs up to MMV_MAX_T, and past that cuBLAS GEMMs on f16
copies, or with `int8_mma` integer GEMMs on int8 tensor cores (``gemmq``) for the legacy quants
(the executable asks for them from sm_80, where they need no f16 copies); every small-batch
pass of llmrt.lower.passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower import passes, steps
from llmrt.lower.steps import BLOCK_TYPES, Q8_TYPES
from llmrt.lower.view import View

F32, F16 = GGMLType.F32, GGMLType.F16
KERNELS = Path(__file__).parent / "kernels"
MMV_MAX_T = 8  # mul_mat with at most this many token rows runs as matrix-vector kernels
MMVQ_MAX_T = 64  # the integer mat-vec (exact int8 dot products, as ggml) also serves short prompts
FATTN_DIMS = (16, 32, 64, 128, 256)
FATTN_MAX_S = 32768
FATTN_SPLIT_KEYS = 64  # keys a part of split attention takes, at least
# prompt attention of at least this many query rows on an f16 cache runs on the matrix units
# (fattn_mma: mma.sync, sm_80 and later) for these head sizes
FATTN_MMA_MIN_T = 16
FATTN_MMA_DIMS = (32, 64, 128)
# the split kernel's blocks wait for each other, so all must be resident at once: at most this
# many a multiprocessor (its launch bounds allow 4), fewer where its shared memory allows fewer
FATTN_RESIDENT_PER_SM = 4


def _mmv_max_t(dtype: GGMLType) -> int:
    return max(MMV_MAX_T, MMVQ_MAX_T) if dtype in Q8_TYPES else MMV_MAX_T


def _attention(node: Tensor) -> bool:
    q, k, v = node.srcs[:3]
    d = q.shape[2]
    return (
        d in FATTN_DIMS and v.shape[2] == d and k.dtype == v.dtype and k.dtype in (F32, F16)
        and k.strides[-1] == 1 and v.strides[-1] == 1 and k.shape[0] <= FATTN_MAX_S
    )  # fmt: skip


# what the kernels implement; drives placement, fusion and conformance skips
supports = steps.step_supports(BLOCK_TYPES, _mmv_max_t, _attention)


def attention_parts(
    s: int, blocks: int, d: int, sms: int, resident: Callable[[int], int], heads: int = 1
) -> tuple[int, int]:
    """(parts, dynamic shared memory bytes a block) of split attention over `s` keys for
    `blocks` (head groups x tokens) blocks a part, each of `heads` query heads, on `sms`
    multiprocessors: as many parts as FATTN_RESIDENT_PER_SM blocks a multiprocessor allow, fewer
    where `resident(smem)`, the blocks the kernel fits a multiprocessor at that shared memory, is
    lower (fewer parts are longer, and a part's scores take shared memory)."""
    per_sm = FATTN_RESIDENT_PER_SM
    while True:
        parts = min(64, -(-s // FATTN_SPLIT_KEYS), max(1, per_sm * sms // blocks))
        smem = (heads * (d + -(-s // parts)) + 256 * 8 + 2 * d) * 4
        if per_sm == 1 or resident(smem) >= per_sm:
            return parts, smem
        per_sm -= 1


def attention_split(
    s: int, hq: int, hkv: int, t: int, d: int, sms: int, resident: Callable[[int, int], int]
) -> tuple[int, int, int]:
    """(query heads a block, parts, dynamic shared memory a block) of split attention: the heads
    of a KV head grouped (llmrt.lower.passes.attention_heads) where all the parts' blocks then
    fit the GPU at once (`resident(heads, smem)`: blocks a multiprocessor holds), else one head
    a block (a group's scores of a long part may not fit shared memory)."""
    for heads in dict.fromkeys((passes.attention_heads(hq, hkv), 1)):
        blocks = hq // heads * t
        fits = functools.partial(resident, heads)
        parts, smem = attention_parts(s, blocks, d, sms, fits, heads)
        if heads == 1 or parts * blocks <= fits(smem) * sms:
            break
    return heads, parts, smem


def _gemm_with_f16_copies(lo: steps.StepLowering, node: Tensor, int8_mma: bool) -> View:
    """A long product runs as cuBLAS on f16 copies of the weight and the activations, unless it
    becomes a gemmq (the legacy quants, on int8 MMA), which needs no copies."""
    out = steps.lower_mul_mat(lo, node)
    step = lo.steps[-1]
    if step.op == "gemm" and not (int8_mma and step.params["type"] in Q8_TYPES):
        m, k, t = step.params["m"], step.params["k"], step.params["t"]
        step.temps = [lo.storage("arena", m * k * 2), lo.storage("arena", t * k * 2)]
    return out


def lower(graph: Graph, int8_mma: bool = True) -> steps.Plan:
    mul_mat = functools.partial(_gemm_with_f16_copies, int8_mma=int8_mma)
    plan, lo = steps.lower_steps(graph, supports, _mmv_max_t, {Op.MUL_MAT: mul_mat})
    passes.small_batch(plan, lo.storage, Q8_TYPES)
    if int8_mma:
        passes.q8_gemms(plan, lo.storage, Q8_TYPES)
        plan.steps[:] = passes.shared_mat_vecs(plan.steps, plan.reads, op="gemmq")
    steps.liveness(plan.steps, plan.outputs)
    return plan


def kernel_source(module: str) -> str:
    """The CUDA source NVRTC compiles for a module: ops.cu ("ops"), or weights.cu for one weight
    type (its number as a string), after common.cuh; norms in float64, as the reference computes
    them."""
    common = "#define NORM_F64 1\n" + (KERNELS / "common.cuh").read_text()
    if module == "ops":
        return common + (KERNELS / "ops.cu").read_text()
    return f"#define WTYPE {module}\n" + common + (KERNELS / "weights.cu").read_text()
