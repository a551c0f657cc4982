"""What the OpenCL kernels take, and the steps they run (llmrt.lower's step lowering).

A weight product of up to MMV_MAX_T token rows is a mat-vec (``mmv``, the residual add in its
epilogue), a longer one a tiled ``gemm`` reading the blocks as stored; a norm takes its weight.

With ``fused`` (what the program asks for on every device: a launch costs ~10 µs on a GPU and
a few on PoCL, and a decode step was ~575 of them) the small-batch passes of llmrt.lower.passes
apply as on CUDA: mat-vecs of the legacy quants become integer mat-vecs (``mmvq``) on activations
quantized once to q8 blocks (by the norm or attention that makes them, or a ``quant_q8`` step),
q/k/v share one launch, gate/up and their GLU one, rope and the KV writes one (or go into the
one-token attention). A CPU device (PoCL) runs the same steps on its own kernels (no local
memory or barriers: mmvq_cpu, fattn_row, rope_qkv_rows, quant_q8_blocks; BENCHMARKS.md).

With ``q8_gemm`` (a GPU's choice) prompt products of the same legacy quants become integer
GEMMs (``gemmq``, ggml's MMQ) on activations quantized once to q8 blocks the same way; a CPU
device keeps its float per-row products (mmv_row) for prompts.
"""

from __future__ import annotations

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.lower import passes
from llmrt.lower.split import split_weight_steps
from llmrt.lower.steps import (
    BLOCK_TYPES,
    Q8_TYPES,
    Plan,
    Step,
    liveness,
    lower_steps,
    step_supports,
)

F32, F16, I32, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I32, GGMLType.BF16
# weights.cl reads BLOCK_TYPES' blocks as stored; Q8_TYPES' products run on int8 activations
# when fused (mmvq) or on a GPU's prompts (gemmq)
MMV_MAX_T = 8  # mat-vecs (float or integer) up to this many token rows, gemm past it
MAX_HEAD_DIM = 256
# a GPU mat-vec's last work-group norms its output row up to this many columns, in place of a
# launch of its own: one work-group's serial pass over a long row costs more than the launch it
# saves. On an H100 (BENCHMARKS.md, 2026-12-07) the 135M's 576-wide rows ran tg128 at 583-607
# t/s in the mat-vec, 496-532 apart; the 1B's 2048-wide 713-725 in it, 742-772 apart; the 8B's
# 4096-wide 165-169 in it, 246-258 apart (2026-12-06). A GLU row's q8 blocks take no such pass
# (each block by the work-group that completes it), so they go into the mat-vec at any length
GPU_EPILOGUE_MAX_COLS = 1024
# a GPU's gate/up mat-vec takes the FFN's down projection after it (ffn_down): one launch a layer
# fewer, where a decode step's enqueues, not its kernels, set the pace (the 135M shape on NVIDIA's
# driver: ~5 us of host time a launch); the down's rows at most this many (the sum of its
# partials and the norm are one work-group's). 0: not taken, until an H100 measures it
FFN_DOWN_MAX_ROWS = 0
# a GPU's one-token attention takes the output projection after it (attn_o): one launch a layer
# fewer, the same trade as FFN_DOWN_MAX_ROWS (its rows at most this many: their sum and the norm
# are one work-group's, and only a row block's last work-group reads the weight). 0: not taken,
# until an H100 measures it
ATTN_O_MAX_ROWS = 0
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
q8_layout = passes.q8_layout


def _attention(node: Tensor) -> bool:
    q, k, v = node.srcs[:3]
    return (
        q.shape[2] <= MAX_HEAD_DIM and v.shape[2] <= MAX_HEAD_DIM and k.dtype == v.dtype
        and q.shape[2] % 4 == 0 and v.shape[2] % 4 == 0
        and k.dtype in (F32, F16) and k.strides[-1] == 1 and v.strides[-1] == 1
    )  # fmt: skip


# what the kernels implement; drives placement, fusion and conformance skips
supports = step_supports(BLOCK_TYPES, lambda dtype: MMV_MAX_T, _attention)


def mat_vec_epilogues(plan: Plan, max_cols: int | None = None) -> None:
    """A one-token integer mat-vec takes the step after it when that step reads only its output
    row: the GLU's ``quant_q8`` (``params["q8_out"]``), or the ``norm_q8`` of its residual sum
    (``params["norm"]``, that step). On a CPU device's kernels (mmvq_cpu) a work-item a block of 32
    outputs writes their q8 block, and the last work-item to finish norms the row; on a GPU's the
    work-group that completes a q8 block's rows writes it (rows of any length), and the last
    work-group to finish norms the row, for rows of at most `max_cols` (past that one work-group
    takes longer than a launch of its own). One launch fewer each (SmolLM2 on PoCL: 214 -> 155 a
    decode step; BENCHMARKS.md). What the taken step wrote and read is the mat-vec's
    (``also_writes``, ``also_reads``) for liveness."""
    out: list[Step] = []
    for st in plan.steps:
        mv = out[-1] if out else None
        if mv is not None and mv.op == "mmvq" and mv.params["t"] == 1 and st.ins:
            p, y = mv.params, mv.params.get("outs", [mv.out])[0]
            x = st.ins[0]
            whole = y.n == x.n and y.contiguous and x.contiguous and y.same(x)
            glu, res = "glu" in p, "glu" not in p and "outs" not in p and len(mv.ins) > 1
            fits = max_cols is None or x.n <= max_cols
            if whole and p.get("ms", [p["m"]])[0] % 32 == 0:
                if glu and st.op == "quant_q8":
                    p["q8_out"] = st.params["q8"]
                    p["also_writes"] = [st.params["q8"]]
                    continue
                if res and fits and st.op == "norm_q8" and st.out.n == x.n:
                    p["norm"] = st
                    p["also_writes"] = [st.out.storage, st.params["q8"]]
                    p["also_reads"] = [v.storage for v in st.ins]
                    continue
        out.append(st)
    plan.steps[:] = out


def _take(host: Step, st: Step) -> None:
    """`st` taken into the launch of `host`: what it writes and reads is `host`'s for liveness."""
    p = host.params
    p["also_writes"] = [*p.get("also_writes", ()), st.out.storage,
                        *st.params.get("also_writes", ())]  # fmt: skip
    p["also_reads"] = [*p.get("also_reads", ()), *(v.storage for v in st.ins),
                       *st.params.get("also_reads", ())]  # fmt: skip


def ffn_down(plan: Plan, max_rows: int) -> None:
    """A one-token gate/up mat-vec that writes its GLU row's q8 blocks (``q8_out``) takes the
    mat-vec after it that reads them (the down projection, with its residual and any norm
    epilogue) as ``params["down"]``, where that weight is of the same type and has at most
    `max_rows` rows: weights.cl's MMVQ_EPILOGUE 3. What the taken step wrote and read is the
    gate/up's for liveness."""
    out: list[Step] = []
    for st in plan.steps:
        gu = out[-1] if out else None
        if (gu is not None and "q8_out" in gu.params and st.op == "mmvq" and st.params["t"] == 1
                and st.params["q8"] is gu.params["q8_out"] and len(st.ins) == 2
                and "outs" not in st.params and "glu" not in st.params
                and st.params["type"] == gu.params["type"] and st.params["m"] <= max_rows
                and st.params["k"] == gu.params.get("ms", [gu.params["m"]])[0]):  # fmt: skip
            gu.params["down"] = st
            _take(gu, st)
            continue
        out.append(st)
    plan.steps[:] = out


def attn_o(plan: Plan, max_rows: int) -> None:
    """A one-token attention that writes its output's q8 blocks takes the integer mat-vec after
    it that reads them (the output projection, with its residual and any norm epilogue) as
    ``params["o"]``, where that weight has at most `max_rows` rows: attention.cl's ATTN_O (where
    the launch takes fattn_vec; else the mat-vec launches after it as before)."""
    out: list[Step] = []
    for st in plan.steps:
        fa = out[-1] if out else None
        if (fa is not None and fa.op == "fattn" and fa.ins[0].shape[0] == 1 and "q8" in fa.params
                and st.op == "mmvq" and st.params["t"] == 1 and st.params["q8"] is fa.params["q8"]
                and len(st.ins) == 2 and "outs" not in st.params and "glu" not in st.params
                and "q8_out" not in st.params and st.params["m"] <= max_rows):  # fmt: skip
            fa.params["o"] = st
            _take(fa, st)
            continue
        out.append(st)
    plan.steps[:] = out


def lower(graph: Graph, fused: bool = False, q8_gemm: bool = False, cpu: bool = False,
          max_weight: int | None = None) -> Plan:  # fmt: skip
    """The steps of `graph`; `fused`: with the decode fusions (the choice for GPUs); `q8_gemm`:
    prompt products of the legacy quants on q8 activations (gemmq: a GPU's); `cpu`: for a CPU
    device's kernels (with `fused`, their mat-vec epilogues on rows of any size); `max_weight`:
    the bytes of a weight one buffer holds, a product or lookup of a larger one a launch a part."""
    plan, lo = lower_steps(graph, supports, lambda dtype: MMV_MAX_T)
    if max_weight is not None:
        split_weight_steps(plan, lo.storage, max_weight)
    if fused:
        passes.small_batch(plan, lo.storage, Q8_TYPES)
        mat_vec_epilogues(plan, None if cpu else GPU_EPILOGUE_MAX_COLS)
        if not cpu and FFN_DOWN_MAX_ROWS:
            ffn_down(plan, FFN_DOWN_MAX_ROWS)
        if not cpu and ATTN_O_MAX_ROWS:
            attn_o(plan, ATTN_O_MAX_ROWS)
    if q8_gemm:
        passes.q8_gemms(plan, lo.storage, Q8_TYPES)
    liveness(plan.steps, plan.outputs)
    return plan
