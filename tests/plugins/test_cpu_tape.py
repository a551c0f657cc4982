"""A decode step as one compiled call (llmrt_cpu.tape): the same bits as the step program, the
same errors, and graphs it cannot run still run, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt import engine, reference
from llmrt.gguf import GGMLType, quantize
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph
from llmrt.testing.conformance import nmse
from llmrt_cpu import backend, quant, tape
from llmrt_cpu.backend import CPUProgram

T = GGMLType


def _weight(rng: np.random.Generator, weight_type: GGMLType, m: int, k: int):
    values = rng.uniform(-1, 1, (m, k)).astype(np.float32) / np.sqrt(k, dtype=np.float32)
    if weight_type == T.F32:
        return values
    if weight_type == T.F16:
        return values.astype(np.float16)
    raw = quantize(values, weight_type).reshape(m, -1)
    return reference.QuantizedWeight(raw, weight_type, (m, k))


def _every_instruction(t: int, n_ctx: int = 16, cache: GGMLType = T.F16) -> tuple[Graph, dict]:
    """A graph with an op of every instruction the tape has: lookups in quantized and float
    tables, a norm with two readers and norms folded into their products, products grouped by
    activation and type beside products alone and float ones, rope with and without factors,
    KV cache writes and windows, masked soft-capped attention, broadcast adds, gated units."""
    g = Graph("every instruction")
    k, heads, kv_heads, d = 256, 4, 2, 32
    tokens, cells = g.input("tokens", (t,), T.I32), g.input("cells", (t,), T.I32)
    pos, mask = g.input("pos", (t,), T.I32), g.input("mask", (t, 8))
    x = g.scale(g.get_rows(g.weight("embd", (50, k), T.Q8_0), tokens), 3.0)
    g.output("rows_k", g.get_rows(g.weight("embd_k", (40, 256), T.Q4_K), tokens))
    x = g.add(x, g.get_rows(g.weight("embd16", (40, k), T.F16), tokens))
    x = g.add(x, g.get_rows(g.weight("embd32", (40, k), T.F32), tokens))
    shared = g.rms_norm(x, 1e-5)
    h = g.mul(shared, g.weight("norm", (k,), T.F32))
    q = g.reshape(g.mul_mat(g.weight("q", (heads * d, k), T.Q4_1), h), t, heads, d)
    kk = g.reshape(g.mul_mat(g.weight("k", (kv_heads * d, k), T.Q4_1), h), t, kv_heads, d)
    v = g.reshape(g.mul_mat(g.weight("v", (kv_heads * d, k), T.Q4_1), h), t, kv_heads, d)
    q = g.mul(g.rms_norm(q, 1e-6), g.weight("q_norm", (d,), T.F32))
    q = g.rope(q, pos, n_dims=d, mode=ROPE_NEOX, freq_base=10000.0)
    kk = g.rope(kk, pos, n_dims=16, mode=ROPE_NORMAL, freq_base=500.0, freq_scale=0.5,
                freq_factors=g.weight("factors", (8,), T.F32), attn_factor=1.25)  # fmt: skip
    ck = g.set_rows(g.state("cache_k", (n_ctx, kv_heads, d), cache), cells, kk)
    cv = g.set_rows(g.state("cache_v", (n_ctx, kv_heads, d), cache), cells, v)
    a = g.flash_attn_ext(q, g.rows(ck, 8), g.rows(cv, 8), mask, scale=0.2, softcap=30.0)
    x = g.add(x, g.mul_mat(g.weight("o", (k, heads * d), T.Q5_0), g.reshape(a, t, heads * d)))
    h = g.mul(g.rms_norm(x, 1e-5), g.weight("ffn_norm", (k,), T.F32))
    up = g.swiglu(g.mul_mat(g.weight("gate", (256, k), T.Q6_K), h),
                  g.mul_mat(g.weight("up", (256, k), T.Q6_K), h))  # fmt: skip
    up = g.mul(up, g.geglu(g.mul_mat(g.weight("g16", (256, k), T.F16), h),
                           g.mul_mat(g.weight("gbf", (256, k), T.BF16), h)))  # fmt: skip
    x = g.add(x, g.mul_mat(g.weight("down", (k, 256), T.Q4_K), g.silu(up)))
    x = g.add(g.gelu(x), g.mul(shared, g.weight("bias", (k,), T.F32)))
    x = g.get_rows(x, g.input("out_rows", (t,), T.I32))
    g.output("logits", g.mul_mat(g.weight("head", (60, k), T.F32), x))
    rng = np.random.default_rng(t)
    bindings = {}
    for node in g.leaves:
        if node.op.value == "weight" and len(node.shape) == 2:
            m, kk_ = node.shape
            bindings[node.key] = _weight(rng, node.dtype, m, kk_)
        elif node.op.value == "weight":
            bindings[node.key] = rng.uniform(0.5, 1.5, node.shape).astype(np.float32)
    bf16 = bindings["gbf"]
    bits = rng.uniform(-0.1, 0.1, (256, k)).astype(np.float32).view(np.uint32) >> 16
    bits = bits.astype(np.uint16)
    bindings["gbf"] = reference.QuantizedWeight(bits.view(np.uint8).reshape(256, -1), T.BF16,
                                                bf16.shape)  # fmt: skip
    return g, bindings


def _caches(n_ctx: int, cache: GGMLType) -> dict:
    dtype = np.float16 if cache == T.F16 else np.float32
    return {name: np.zeros((n_ctx, 2, 32), dtype) for name in ("cache_k", "cache_v")}


def _step_inputs(t: int, step: int) -> dict:
    rng = np.random.default_rng(100 + step)
    cells = np.arange(step * t, step * t + t, dtype=np.int32)
    mask = np.where(np.arange(8)[None, :] <= cells[:, None], 0.0, -np.inf).astype(np.float32)
    return {
        "tokens": rng.integers(0, 40, t).astype(np.int32), "cells": cells, "pos": cells + 3,
        "mask": mask, "out_rows": np.arange(t, dtype=np.int32)[::-1].copy(),
    }  # fmt: skip


@pytest.mark.parametrize("cache", [T.F16, T.F32])
@pytest.mark.parametrize("t", [1, 3, 40])
def test_tape_computes_the_step_programs_bits_for_every_instruction(t, cache):
    """Decode steps, and (where the host has the 8-row kernels its products take) a prompt."""
    n_ctx = 16 if t < 8 else 8 * t
    g, bindings = _every_instruction(t, n_ctx=n_ctx, cache=cache)
    ours, theirs = _caches(n_ctx, cache), _caches(n_ctx, cache)
    taped = CPUProgram(g, {**bindings, **ours})
    if t > quant.ROW_TOKENS and not quant.X8_TYPES:
        assert taped.tape is None  # its prompt products take the tiles kernels, step by step
        return
    stepped = CPUProgram(g, {**bindings, **theirs}, use_tape=False)
    assert taped.tape is not None and stepped.tape is None
    steps = max(8 // t, 2)
    for step in range(steps):
        inputs = _step_inputs(t, step)
        got, expected = taped.run(inputs), stepped.run(inputs)
        for name in ("logits", "rows_k"):
            np.testing.assert_array_equal(got[name], expected[name])
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])
    oracle = reference.ReferenceProgram(g, {**bindings, **_caches(n_ctx, cache)})
    for step in range(steps):
        expected = oracle.run(_step_inputs(t, step))
    for name in ("logits", "rows_k"):
        assert nmse(expected[name], got[name]) <= 1e-4, name


def test_tape_errors_are_the_step_programs():
    g, bindings = _every_instruction(1)
    program = CPUProgram(g, {**bindings, **_caches(16, T.F16)})
    inputs = _step_inputs(1, 0)
    with pytest.raises(IndexError):
        program.run({**inputs, "tokens": np.array([40], np.int32)})  # the f16 table has 40
    with pytest.raises(IndexError):
        program.run({**inputs, "cells": np.array([16], np.int32)})
    program.run(inputs)  # and it still runs


def test_graphs_without_instructions_run_step_by_step():
    g = Graph("softmax")
    x = g.input("x", (2, 8))
    g.output("p", g.soft_max(g.mul(x, x)))
    program = CPUProgram(g, {})
    assert program.tape is None
    x_value = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    expected = reference.ReferenceProgram(g, {}).run({"x": x_value})["p"]
    np.testing.assert_array_equal(program.run({"x": x_value})["p"], expected)
    prompt = Graph("a prompt's Q5_K product")
    x = prompt.input("x", (40, 256))
    prompt.output("y", prompt.mul_mat(prompt.weight("w", (16, 256), T.Q5_K), x))
    w = {"w": _weight(np.random.default_rng(1), T.Q5_K, 16, 256)}
    program = CPUProgram(prompt, w)
    assert program.tape is None  # no 8-row kernel for Q5_K: the tiles kernel, step by step
    x_value = np.random.default_rng(2).uniform(-1, 1, (40, 256)).astype(np.float32)
    expected = reference.ReferenceProgram(prompt, w).run({"x": x_value})["y"]
    assert nmse(expected, program.run({"x": x_value})["y"]) <= 1e-4


def test_arena_plan_never_overlaps_live_values():
    rng = np.random.default_rng(0)
    n = 300
    first = rng.integers(-1, 100, n).tolist()
    last = [f + int(rng.integers(0, 20)) for f in first]
    sizes = rng.integers(0, 5000, n).tolist()
    offsets, size = tape._plan(sizes, first, last)
    for a in range(n):
        assert offsets[a] % tape.ALIGN == 0 and offsets[a] + sizes[a] <= size
        for b in range(a):
            if first[a] <= last[b] and first[b] <= last[a]:  # alive together
                ends = offsets[a] + max(sizes[a], 1), offsets[b] + max(sizes[b], 1)
                assert ends[0] <= offsets[b] or ends[1] <= offsets[a]
    assert size < sum(-(-max(s, 1) // 64) * 64 for s in sizes) / 3


def test_a_models_decode_step_is_one_call_with_the_step_programs_logits(smollm2_path, monkeypatch):
    model = engine.load(str(smollm2_path), device="cpu")
    prompt, decoded = list(range(1, 30)), [100, 2000, 30, 7]

    def logits() -> tuple[np.ndarray, engine.Context]:
        ctx = model.context(n_ctx=256)
        rows = [ctx.eval(prompt)] + [ctx.eval([token]) for token in decoded]
        rows.append(ctx.decode(engine.Batch.of([5, 6, 7], ctx.seq_len(0), 0, all_logits=True))[-1])
        return np.stack(rows), ctx

    taped, ctx = logits()
    executable = ctx._executable(1, 256, 1)
    assert executable.tape is not None
    assert executable.tape.arena_bytes < 1 << 20  # activations only, planned by liveness
    products = executable.tape.code[executable.tape.code[:, 0] == tape.ROWS]
    assert bool((products[:, 14] == 1).any()) == bool(quant.X8_TYPES)  # Q4_1 8 rows at a time
    steps_compile = backend.CPUDevice.compile
    monkeypatch.setattr(backend.CPUDevice, "compile",
                        lambda self, g, b: CPUProgram(g, b, use_tape=False))  # fmt: skip
    stepped, ctx = logits()
    assert ctx._executable(1, 256, 1).tape is None
    monkeypatch.setattr(backend.CPUDevice, "compile", steps_compile)
    np.testing.assert_array_equal(taped, stepped)
