"""The OpenCL backend's lowering (pure Python: runs without pyopencl): the decode fusions a GPU
device gets, and the buffer plan they leave."""

from __future__ import annotations

import collections

import pytest
from plan_shapes import file_graph

from llmrt.lower import plan_arena
from llmrt.testing.tiny import write_tiny_llama
from llmrt_opencl.lower import Q8_TYPES, lower, supports


def _wide_heads(tmp_path):
    """The tiny model with two query heads and one KV head of 32: its attention writes q8."""
    return write_tiny_llama(tmp_path / "wide-heads.gguf", n_head=2, n_head_kv=1)


@pytest.mark.parametrize(
    "q8_gemm, cpu",
    [(False, False), (True, False), (False, True)],
    ids=["float-gemm", "gemmq", "cpu"],
)
@pytest.mark.parametrize("n_tokens", [1, 3, 40])
@pytest.mark.parametrize("taken", ["", "ffn-down", "ffn-down+attn-o"])
def test_fused_plan_places_every_q8_buffer_and_never_overlaps_live_ones(
    tiny_gguf_with_vocab, tmp_path, n_tokens, q8_gemm, cpu, taken, monkeypatch
):
    import llmrt_opencl.lower as lw

    monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", (1 << 20) * ("ffn-down" in taken))
    monkeypatch.setattr(lw, "ATTN_O_MAX_ROWS", (1 << 20) * ("attn-o" in taken))
    model = _wide_heads(tmp_path) if "attn-o" in taken else tiny_gguf_with_vocab
    graph = file_graph(model, n_tokens)
    assert all(supports(node) for node in graph.nodes)
    plan = lower(graph, fused=True, q8_gemm=q8_gemm, cpu=cpu)
    size = plan_arena(plan.storages)
    arena = [s for s in plan.storages if s.kind == "arena" and s.first >= 0]
    for i, a in enumerate(arena):
        for b in arena[i + 1 :]:
            if a.first <= max(b.last, b.first) and b.first <= max(a.last, a.first):
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
    for i, step in enumerate(plan.steps):  # the q8 forms of activations: placed, live here
        q8s = [step.params["q8"]] if "q8" in step.params else []
        for st in q8s + [s for s in step.params.get("also_writes", ()) if s.kind == "arena"]:
            assert 0 <= st.first <= i <= max(st.last, st.first) and st.offset + st.nbytes <= size
    for step in plan.steps:
        if step.out is not None:
            assert all(step.out.storage is not v.storage for v in step.ins), step.op


def test_decode_fusions_for_integer_mat_vecs(tiny_gguf_with_vocab):
    """A GPU's decode step: norm -> q8, q/k/v in one launch, gate/up + GLU in one, rope and the
    KV writes inside the attention; the tiny model's step goes from 49 kernels to 31."""
    graph = file_graph(tiny_gguf_with_vocab, 1)
    types = {n.dtype for n in graph.nodes if n.op.name == "WEIGHT"}
    if not types & Q8_TYPES:
        pytest.skip(f"fixture weights are {types}")
    plain, fused = lower(graph), lower(graph, fused=True)
    assert not any(s.op in ("mmvq", "norm_q8", "quant_q8", "rope_qkv") for s in plain.steps)
    ops = collections.Counter(s.op for s in fused.steps)
    n_layers = ops["fattn"]
    assert ops["rope"] == ops["set_rows"] == ops["glu"] == ops["mmv"] == ops["rope_qkv"] == 0
    assert all("nr" in s.params for s in fused.steps if s.op == "fattn")
    # every norm writes q8 for its mat-vecs (its own launch, or the epilogue of the mat-vec whose
    # residual sum it norms); the attention block's norm output only they read
    mmvq = [s for s in fused.steps if s.op == "mmvq"]
    norms = [s for s in fused.steps if s.op == "norm_q8"]
    norms += [s.params["norm"] for s in mmvq if "norm" in s.params]
    assert len(norms) == 2 * n_layers + 1 and ops["norm"] == 0
    assert all(s.params["y_unused"] for s in norms)
    assert sum(len(s.params.get("outs", ())) == 3 for s in mmvq) == n_layers  # q, k, v
    assert sum("glu" in s.params for s in mmvq) == n_layers  # gate, up, swiglu
    assert sum(len(s.ins) == 2 and "glu" not in s.params for s in mmvq) == 2 * n_layers
    # the glu output is quantized (by its mat-vec's epilogue), and so is the attention's by a
    # quant_q8 launch where its rows are not whole q8 blocks (the fixture's 16-wide heads)
    assert sum("q8_out" in s.params for s in mmvq) == n_layers
    assert ops["quant_q8"] == sum(
        1 for s in fused.steps if s.op == "fattn" and "q8" not in s.params
    )
    # 49 kernels -> 31 by the fusions, less the 3 a layer (but the last FFN's norm) epilogues take
    assert (len(plain.steps), len(fused.steps)) == (49, 31 - (3 * n_layers - 1))


def test_prompts_keep_rope_qkv(tiny_gguf_with_vocab):
    """Several tokens: rope and the KV writes are one launch before the attention."""
    ops = [s.op for s in lower(file_graph(tiny_gguf_with_vocab, 3), fused=True).steps]
    assert ops.count("rope_qkv") == ops.count("fattn") and "rope" not in ops
    # past MMV_MAX_T tokens products are tiled GEMMs on float activations; only the output
    # head, over the last token's row, is still an integer mat-vec
    long = lower(file_graph(tiny_gguf_with_vocab, 40), fused=True).steps
    assert "gemm" in [s.op for s in long]
    assert [s.params["t"] for s in long if s.op == "mmvq"] == [1]


def test_a_gpu_prompt_takes_integer_gemms_on_q8_activations(tiny_gguf_with_vocab):
    """Past MMV_MAX_T tokens a GPU's products of the legacy quants are gemmq steps: the
    activations quantized once (by the norm before them, else a quant_q8 step) for all the
    products that read them (q, k and v share one)."""
    graph = file_graph(tiny_gguf_with_vocab, 40)
    types = {n.dtype for n in graph.nodes if n.op.name == "WEIGHT"}
    if not types & Q8_TYPES:
        pytest.skip(f"fixture weights are {types}")
    steps = lower(graph, fused=True, q8_gemm=True).steps
    float_gemms = [s for s in steps if s.op == "gemm"]
    gemmq = [s for s in steps if s.op == "gemmq"]
    assert gemmq and all(s.params["type"] not in Q8_TYPES for s in float_gemms)
    assert all(s.params["type"] in Q8_TYPES and s.params["t"] == 40 for s in gemmq)
    n_layers = sum(s.op == "fattn" for s in steps)
    # the attention norm's q8 serves q, k and v; the FFN norm's gate and up
    q8s = collections.Counter(id(s.params["q8"]) for s in gemmq)
    writers = {id(s.params["q8"]): s for s in steps if s.op in ("norm_q8", "quant_q8")}
    assert set(q8s) <= set(writers)
    assert sum(writers[q].op == "norm_q8" for q in q8s) == 2 * n_layers
    norms = [s for s in steps if s.op == "norm_q8" and id(s.params["q8"]) in q8s]
    assert all(s.params["y_unused"] for s in norms)


@pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu"])
def test_mat_vecs_take_the_steps_after_them(tiny_gguf_with_vocab, cpu):
    """A one-token mat-vec takes the GLU's quant_q8 after it, or the norm_q8 of its residual sum
    (run by its last work-group on a GPU, its last work-item on a CPU): their outputs become its
    writes, live from its step on."""
    plan = lower(file_graph(tiny_gguf_with_vocab, 1), fused=True, cpu=cpu)
    n_layers = sum(s.op == "fattn" for s in plan.steps)
    glu_q8 = [i for i, s in enumerate(plan.steps) if "q8_out" in s.params]
    normed = [i for i, s in enumerate(plan.steps) if "norm" in s.params]
    # every layer's GLU; the residual sums the next norm reads: each attention's, and each FFN's
    # but the last (the output's rows are picked by get_rows before the final norm)
    assert len(glu_q8) == n_layers and len(normed) == 2 * n_layers - 1
    for i in glu_q8 + normed:
        for st in plan.steps[i].params["also_writes"]:
            if st.kind == "arena":
                assert st.first == i  # so the arena keeps it off the mat-vec's inputs
    for i in normed:
        taken = plan.steps[i].params["norm"]
        assert taken.op == "norm_q8" and taken.ins[0].same(plan.steps[i].out)


def test_a_gpu_keeps_norm_launches_for_rows_past_its_epilogue_width(tiny_gguf_with_vocab,
                                                                    monkeypatch):  # fmt: skip
    """A GPU's norm epilogue is one work-group's work: rows wider than GPU_EPILOGUE_MAX_COLS keep
    their norm_q8 launches (a CPU device's take any width). A GLU row's q8 blocks are written by
    the work-groups that complete them, so its quant_q8 goes into the mat-vec at any width."""
    import llmrt_opencl.lower as lw

    graph = file_graph(tiny_gguf_with_vocab, 1)
    plan = lower(graph, fused=True)
    taken = [s for s in plan.steps if "q8_out" in s.params or "norm" in s.params]
    glu = [s for s in taken if "q8_out" in s.params]
    norms = [s for s in taken if "norm" in s.params]
    assert glu and norms
    # the quant_q8 steps left are attention outputs' (the attention launch may take them)
    pairs = zip(plan.steps, plan.steps[1:], strict=False)
    assert all(before.op == "fattn" for before, st in pairs if st.op == "quant_q8")
    norm_width = max(s.out.n for s in norms)
    monkeypatch.setattr(lw, "GPU_EPILOGUE_MAX_COLS", norm_width - 1)
    narrow = lower(graph, fused=True)
    assert sum("q8_out" in s.params for s in narrow.steps) == len(glu)
    assert len(narrow.steps) == len(plan.steps) + len(norms)
    monkeypatch.setattr(lw, "GPU_EPILOGUE_MAX_COLS", 1)  # narrower than any GLU row too
    assert sum("q8_out" in s.params for s in lower(graph, fused=True).steps) == len(glu)
    assert len(lower(graph, fused=True, cpu=True).steps) == len(plan.steps)


def test_a_gpu_gate_up_mat_vec_takes_the_down_projection_where_asked(tiny_gguf_with_vocab,
                                                                    monkeypatch):  # fmt: skip
    """With FFN_DOWN_MAX_ROWS, a GPU's one-token gate/up mat-vec takes the down projection after
    it (with its residual and its norm epilogue): a step a layer fewer; rows past the bound, a
    CPU device's plan and a prompt's keep theirs."""
    import llmrt_opencl.lower as lw

    graph = file_graph(tiny_gguf_with_vocab, 1)
    if not {n.dtype for n in graph.nodes if n.op.name == "WEIGHT"} & Q8_TYPES:
        pytest.skip("no legacy quant weights")
    plain = lower(graph, fused=True)
    gate_up = [s for s in plain.steps if "q8_out" in s.params]
    rows = {s.params["m"] for s in plain.steps if s.op == "mmvq" and s.params["q8"] in
            [g.params["q8_out"] for g in gate_up]}  # fmt: skip
    monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", max(rows))
    taken = lower(graph, fused=True)
    downs = [s.params["down"] for s in taken.steps if "down" in s.params]
    assert len(downs) == len(gate_up) > 0 and len(taken.steps) == len(plain.steps) - len(downs)
    assert all("norm" in d.params for d in downs[:-1])  # each layer's down norms the next's row
    monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", max(rows) - 1)
    assert len(lower(graph, fused=True).steps) == len(plain.steps)
    monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", max(rows))
    assert not any("down" in s.params for s in lower(graph, fused=True, cpu=True).steps)
    prompt = lower(file_graph(tiny_gguf_with_vocab, 3), fused=True)
    assert not any("down" in s.params for s in prompt.steps)


def test_a_gpu_one_token_attention_takes_the_output_projection_where_asked(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """With ATTN_O_MAX_ROWS, a GPU's one-token attention that writes q8 takes the output
    projection after it (with its residual and the FFN norm it took): a step a layer fewer;
    rows past the bound, a CPU device's plan and a prompt's keep theirs."""
    import llmrt_opencl.lower as lw

    model = _wide_heads(tmp_path)
    graph = file_graph(model, 1)
    plain = lower(graph, fused=True)
    attention = [s for s in plain.steps if s.op == "fattn"]
    assert attention and all("q8" in s.params for s in attention)
    rows = {s.params["m"] for s in plain.steps if s.op == "mmvq" and s.params["q8"] in
            [a.params["q8"] for a in attention]}  # fmt: skip
    monkeypatch.setattr(lw, "ATTN_O_MAX_ROWS", max(rows))
    taken = lower(graph, fused=True)
    outs = [s.params["o"] for s in taken.steps if "o" in s.params]
    assert len(outs) == len(attention) and len(taken.steps) == len(plain.steps) - len(outs)
    assert all("norm" in o.params and len(o.ins) == 2 for o in outs)
    monkeypatch.setattr(lw, "ATTN_O_MAX_ROWS", max(rows) - 1)
    assert len(lower(graph, fused=True).steps) == len(plain.steps)
    monkeypatch.setattr(lw, "ATTN_O_MAX_ROWS", max(rows))
    assert not any("o" in s.params for s in lower(graph, fused=True, cpu=True).steps)
    prompt = lower(file_graph(model, 3), fused=True)
    assert not any("o" in s.params for s in prompt.steps)
