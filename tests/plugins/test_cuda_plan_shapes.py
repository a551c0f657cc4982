"""The CUDA backend's plan for synth_gguf's model shapes (pure Python, no GPU): the launches
`lower` makes for a decode step, short prompts (integer mat-vecs) and a longer one (integer
GEMMs), by step and by the integer mat-vec's fused kind; and the buffer plan: every step names
storages that exist, no step writes a buffer it reads, and arena buffers live at the same time
never overlap.

The expected counts are per-layer formulas, n_layer * a + b, so a lost fusion or an added launch
fails them. tests/plugins/test_cuda_plan.py covers the same fusions on a tiny model.
"""

from __future__ import annotations

from collections import Counter

import pytest
from plan_shapes import SHAPES, decode_graph

from llmrt.gguf.constants import GGMLType
from llmrt.lower import plan_arena
from llmrt.lower.steps import Step
from llmrt_cuda.lower import lower

Q4_0, Q8_0 = GGMLType.Q4_0, GGMLType.Q8_0


def kind(step: Step) -> str:
    """A step's op, with the integer mat-vec's fusion and the attention's extras."""
    if step.op in ("mmvq", "gemmq"):
        if "glu" in step.params:
            return "mmvq.glu"  # gate and up mat-vecs and swiglu
        if "outs" in step.params:  # q, k, v (gate, up) over one activation
            return f"{step.op}.outs{len(step.params['outs'])}"
        return f"{step.op}.residual" if len(step.ins) == 2 else step.op
    if step.op in ("mmv", "gemm") and len(step.ins) == 3:
        return f"{step.op}.residual"
    if step.op == "fattn":
        # nr: ropes q, k and writes the new K/V row itself; q8: writes its output as q8 too
        return "fattn" + "".join(f".{p}" for p in ("nr", "q8") if p in step.params)
    return step.op


# Expected steps: kind -> (per layer, once), for n_layer * per_layer + once, alike for the three
# shapes and both quant types. Every plan has the token embeddings' get_rows_w, the get_rows_f32
# of the one row whose logits are wanted, its norm_q8 (the final norm, with the head's q8 blocks)
# and the head's plain integer mat-vec.
ONCE = {"get_rows_w": (0, 1), "get_rows_f32": (0, 1), "norm_q8": (0, 1), "mmvq": (0, 1)}
EXPECTED = {
    # one token: the norms write q8 blocks; q/k/v in one launch; the attention ropes q and k,
    # stores the new K/V row and writes its output as q8; o and down add the residual; gate, up
    # and swiglu in one launch, its output quantized by quant_q8
    "decode": {
        "norm_q8": (2, 1), "mmvq.outs3": (1, 0), "fattn.nr.q8": (1, 0), "mmvq.residual": (2, 0),
        "mmvq.glu": (1, 0), "quant_q8": (1, 0),
    },
    # up to MMVQ_MAX_T (64) tokens: the same, but rope(q), rope(k) and both cache writes are one
    # rope_qkv launch before the attention
    "mmvq": {
        "norm_q8": (2, 1), "mmvq.outs3": (1, 0), "rope_qkv": (1, 0), "fattn.q8": (1, 0),
        "mmvq.residual": (2, 0), "mmvq.glu": (1, 0), "quant_q8": (1, 0),
    },
    # longer prompts: a layer's 7 products on int8 tensor cores in 4 gemmq launches (q, k, v in
    # one, gate and up in one) on q8 activations, from the norms and from quant_q8 launches of
    # the attention's and swiglu's outputs; residual adds and swiglu launch on their own
    "gemmq": {
        "gemmq.outs3": (1, 0), "gemmq.outs2": (1, 0), "gemmq": (2, 0), "norm_q8": (2, 1),
        "quant_q8": (2, 0), "rope_qkv": (1, 0), "fattn": (1, 0), "binary": (2, 0), "glu": (1, 0),
    },
}  # fmt: skip
REGIMES = {1: "decode", 8: "mmvq", 40: "mmvq", 128: "gemmq"}


@pytest.mark.parametrize("n_tokens", list(REGIMES))
@pytest.mark.parametrize("qtype", [Q4_0, Q8_0], ids=["q4_0", "q8_0"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_steps_per_kind(shape_name, qtype, n_tokens):
    n_embd, n_layer, n_head, n_head_kv, n_ff = SHAPES[shape_name][:5]
    plan = lower(decode_graph(shape_name, qtype, n_tokens))
    table = {**ONCE, **EXPECTED[REGIMES[n_tokens]]}
    want = {k: n_layer * a + b for k, (a, b) in table.items()}
    assert dict(Counter(kind(s) for s in plan.steps)) == want
    kv = n_head_kv * (n_embd // n_head)
    for s in plan.steps:
        if s.op in ("mmvq", "mmv", "gemm", "gemmq"):
            assert s.params["type"] == qtype
        if "outs" in s.params:
            assert s.params["ms"] == ([n_ff, n_ff] if len(s.ins) == 2 else [n_embd, kv, kv])
        if "glu" in s.params:
            assert s.params["m"] == n_ff and s.params["glu"] == 0  # swiglu


@pytest.mark.parametrize("n_tokens", list(REGIMES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_buffers_exist_and_live_arena_buffers_never_overlap(shape_name, n_tokens):
    plan = lower(decode_graph(shape_name, Q4_0, n_tokens))
    known = {id(s) for s in plan.storages}
    size = plan_arena(plan.storages)
    for i, step in enumerate(plan.steps):
        views = [*step.ins, *([step.out] if step.out is not None else [])]
        views += step.params.get("outs", [])
        assert all(id(v.storage) in known for v in views), step.op
        # the q8 forms of activations and scratch are placed and live across the steps using them
        for st in ([step.params["q8"]] if "q8" in step.params else []) + step.temps:
            assert id(st) in known and st.kind == "arena", step.op
            assert st.first <= i <= max(st.last, st.first), (i, step.op)
        if step.out is not None:
            assert all(v.storage is not step.out.storage for v in step.ins), f"{step.op} in place"
    arena = [s for s in plan.storages if s.kind == "arena" and s.first >= 0]
    for i, a in enumerate(arena):
        assert a.offset % 256 == 0 and a.offset + a.nbytes <= size
        a0, a1 = a.first, max(a.last, a.first)
        for b in arena[i + 1 :]:
            b0, b1 = b.first, max(b.last, b.first)
            if a0 <= b1 and b0 <= a1:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
