"""The numpy reference against independent computations (loops, the `gguf` package), and the
conformance suite's ability to catch a wrong kernel."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from llmrt import reference
from llmrt.gguf import GGMLType, quantize
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph, Op
from llmrt.testing import cases, check_case
from llmrt_cpu.backend import CPUBackend, CPUDevice, CPUProgram

rng = np.random.default_rng(1)


def run_one(build, inputs: dict, bindings: dict | None = None):
    g = Graph()
    leaves = {k: g.input(k, v.shape, GGMLType.I32 if v.dtype == np.int32 else GGMLType.F32)
              for k, v in inputs.items()}  # fmt: skip
    g.output("out", build(g, leaves))
    return reference.ReferenceProgram(g, bindings or {}).run(inputs)["out"]


@pytest.mark.parametrize("mode", [ROPE_NORMAL, ROPE_NEOX])
def test_rope_matches_a_loop(mode):
    t, h, d, n_dims, base = 3, 2, 8, 6, 10000.0
    x = rng.standard_normal((t, h, d)).astype(np.float32)
    pos = np.array([0, 5, 11], np.int32)
    got = run_one(lambda g, v: g.rope(v["x"], v["pos"], n_dims=n_dims, mode=mode,
                                      freq_base=base), {"x": x, "pos": pos})  # fmt: skip
    want = x.astype(np.float64).copy()
    for ti in range(t):
        for i in range(n_dims // 2):
            theta = pos[ti] * base ** (-2 * i / n_dims)
            a, b = (2 * i, 2 * i + 1) if mode == ROPE_NORMAL else (i, i + n_dims // 2)
            x0, x1 = x[ti, :, a], x[ti, :, b]
            want[ti, :, a] = x0 * math.cos(theta) - x1 * math.sin(theta)
            want[ti, :, b] = x0 * math.sin(theta) + x1 * math.cos(theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[..., n_dims:], x[..., n_dims:])  # the tail passes through


def test_attention_matches_per_head_loops():
    t, hq, hkv, s, d = 2, 4, 2, 5, 8
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    k = rng.standard_normal((s, hkv, d)).astype(np.float32)
    v = rng.standard_normal((s, hkv, d)).astype(np.float32)
    mask = np.zeros((t, s), np.float32)
    mask[0, 4] = -np.inf
    got = run_one(lambda g, x: g.flash_attn_ext(x["q"], x["k"], x["v"], x["mask"], scale=0.3),
                  {"q": q, "k": k, "v": v, "mask": mask})  # fmt: skip
    for ti in range(t):
        for h in range(hq):
            kv = h // (hq // hkv)  # grouped-query: consecutive q heads share a kv head
            scores = [0.3 * float(q[ti, h] @ k[j, kv]) + mask[ti, j] for j in range(s)]
            w = np.exp(np.array(scores) - max(scores))
            w /= w.sum()
            np.testing.assert_allclose(got[ti, h], w @ v[:, kv], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K,
                                   GGMLType.Q6_K])  # fmt: skip
def test_quantized_mul_mat_and_get_rows_match_gguf_dequantization(qtype):
    m, k, t = 40, 512, 3
    w = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(w, qtype).reshape(m, -1)
    dense = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))
    weight = reference.QuantizedWeight(raw, qtype, (m, k))
    x = rng.standard_normal((t, k)).astype(np.float32)
    g = Graph()
    a = g.weight("w", (m, k), qtype)
    b = g.input("x", (t, k))
    ids = g.input("ids", (4,), GGMLType.I32)
    g.output("mm", g.mul_mat(a, b))
    g.output("rows", g.get_rows(a, ids))
    old = reference.SCRATCH_ELEMENTS
    reference.SCRATCH_ELEMENTS = 7 * k  # force several row blocks
    try:
        out = reference.ReferenceProgram(g, {"w": weight}).run(
            {"x": x, "ids": np.array([3, 0, 39, 3], np.int32)}
        )
    finally:
        reference.SCRATCH_ELEMENTS = old
    # ggml rounds the activations to the weight's dot-product type first (8-bit blocks)
    np.testing.assert_allclose(
        out["mm"], reference.vec_dot_round(x, qtype) @ dense.T, rtol=1e-4, atol=1e-4
    )
    assert np.max(np.abs(out["mm"] - x @ dense.T)) < 0.05 * np.max(np.abs(x @ dense.T))
    np.testing.assert_array_equal(out["rows"], dense[[3, 0, 39, 3]])


def test_norms_match_formulas():
    x = rng.standard_normal((3, 17)).astype(np.float32)
    got = run_one(lambda g, v: g.rms_norm(v["x"], 1e-5), {"x": x})
    np.testing.assert_allclose(got, x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5), rtol=1e-6)
    got = run_one(lambda g, v: g.norm(v["x"], 1e-5), {"x": x})
    c = x - x.mean(-1, keepdims=True)
    np.testing.assert_allclose(got, c / np.sqrt((c**2).mean(-1, keepdims=True) + 1e-5), rtol=1e-5)


class _NoisyMatmul(CPUDevice):
    """A device whose mul_mat is slightly wrong, and which declines rope."""

    def supports_op(self, node):
        return node.op is not Op.ROPE and super().supports_op(node)

    def compile(self, graph, bindings):
        program = CPUProgram(graph, bindings, use_tape=False)  # steps, which it then bends
        program.steps = [
            (i, (lambda n, *s, f=fn: f(n, *s) * 1.05) if node.op is Op.MUL_MAT else fn, node, *rest)
            for i, fn, node, *rest in program.steps
        ]
        return program


def test_suite_catches_a_wrong_kernel_and_skips_declined_ops():
    device = _NoisyMatmul(CPUBackend(), 0)
    all_cases = cases()
    mm = next(c for c in all_cases if c.id.startswith("mul_mat(type_a=q4_0"))
    with pytest.raises(AssertionError, match="nmse"):
        check_case(device, mm)
    rope = next(c for c in all_cases if c.id.startswith("rope("))
    assert check_case(device, rope) == "unsupported"
    add = next(c for c in all_cases if c.id.startswith("add("))
    assert check_case(device, add) == "ok"
