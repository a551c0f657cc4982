"""The Vulkan backend beyond the shared conformance suite: a small model end to end against the
CPU reference, compiled graphs replayed with new inputs, state written from the host, and weights
larger than one storage-buffer binding may address."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt import reference
from llmrt.device import registry
from llmrt.gguf import GGMLType, dequantize, quantize
from llmrt.ir import Graph
from llmrt.testing.conformance import WeightData, cases, check_case, nmse


def test_replay_with_new_inputs(vulkan):
    g = Graph("replay")
    x = g.input("x", (3, 40))
    g.output("out", g.argmax(g.soft_max(g.scale(x, 2.0))))
    program = vulkan.compile(g, {})
    rng = np.random.default_rng(1)
    for _ in range(3):
        data = rng.normal(size=(3, 40)).astype(np.float32)
        assert np.array_equal(program.run({"x": data})["out"], np.argmax(data, axis=-1))


def test_weight_split_across_bindings(vulkan, monkeypatch):
    """A weight bigger than maxStorageBufferRange is read through several bindings by rows."""
    rt = vulkan.runtime
    m, k = 1024, 64
    monkeypatch.setattr(rt, "max_range", 300 * 68)  # 256 rows of Q8_0 (68 bytes) per binding
    data = np.random.default_rng(2).uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(data, GGMLType.Q8_0).reshape(m, -1)
    w = vulkan.upload(WeightData("w", GGMLType.Q8_0, (m, k), raw))
    g = Graph("split")
    g.output("out", g.mul_mat(g.weight("w", (m, k), GGMLType.Q8_0), g.input("x", (2, k))))
    x = np.random.default_rng(3).uniform(-1, 1, (2, k)).astype(np.float32)
    got = vulkan.compile(g, {"w": w}).run({"x": x})["out"]
    assert nmse(x @ data.T, got) < 1e-3


@pytest.mark.parametrize("kernels", ["gpu", "cpu"])
def test_tiny_model_matches_cpu(vulkan, tiny_gguf_with_vocab, monkeypatch, kernels):
    """On both kernel families; on the GPU kernels the decode step's norms, swiglu and attention
    merge go to mat-vec prologues, its ropes and cache writes to mat-vec epilogues."""
    from llmrt.engine import load

    monkeypatch.setattr(vulkan.runtime, "cpu", kernels == "cpu")
    cpu, gpu = load(tiny_gguf_with_vocab, device="cpu"), load(tiny_gguf_with_vocab, device=vulkan)
    prompt = [1, 5, 9, 3, 7, 2]
    want = cpu.context(n_ctx=64).eval(prompt, all_logits=True)
    ctx = gpu.context(n_ctx=64)
    got = ctx.eval(prompt, all_logits=True)
    assert nmse(want, got) < 1e-3
    # decode steps replay one compiled graph
    a = cpu.context(n_ctx=64)
    a.eval(prompt)
    for token in (4, 8, 6):
        assert nmse(a.eval([token]), ctx.eval([token])) < 1e-3
    exe = next(v for k, v in ctx.graphs.items() if k[0] == 1)
    program = next(p for p in getattr(exe, "programs", [exe]) if hasattr(p, "dispatches"))
    shaders = {d.shader for d in program.dispatches}
    fused = {"norm", "rope", "set_rows", "quantize_q8"}  # (heads of 16: attn_combine stays)
    assert (not shaders & fused) == (kernels == "gpu")


@pytest.mark.parametrize("kernels", ["gpu", "cpu"])
@pytest.mark.parametrize("int_dot", [True, False])
@pytest.mark.parametrize("wtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_integer_mat_vec_rounds_as_ggml(vulkan, monkeypatch, wtype, int_dot, kernels):
    """The q8_0 family's mat-vec takes activations in q8 blocks (made by the norm that produces
    them, or by quantize_q8) and adds the residual in its epilogue: equal to the reference on
    ggml-rounded activations (up to the norm's own rounding), through OpSDot or the plain integer
    path, on both kernel families."""
    from llmrt.gguf import dequantize
    from llmrt.reference import vec_dot_round

    rt = vulkan.runtime
    if int_dot and not rt.int_dot:
        pytest.skip("no shaderIntegerDotProduct")
    monkeypatch.setattr(rt, "int_dot", int_dot)
    monkeypatch.setattr(rt, "cpu", kernels == "cpu")
    ty = GGMLType[wtype]
    m, k, t = 96, 256, 3
    rng = np.random.default_rng(5)
    data = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(data, ty).reshape(m, -1)
    wd = dequantize(raw.reshape(-1), ty, (m, k))
    w = vulkan.upload(WeightData("w", ty, (m, k), raw))
    g = Graph("q8")
    x, r = g.input("x", (t, k)), g.input("r", (t, m))
    wt = g.weight("w", (m, k), ty)
    g.output("plain", g.mul_mat(wt, x))
    g.output("normed", g.add(g.mul_mat(wt, g.rms_norm(x, 1e-6)), r))
    program = vulkan.compile(g, {"w": w})
    assert not any(d.shader == "eltwise" for d in program.dispatches)  # the add is fused
    xs = rng.uniform(-1, 1, (t, k)).astype(np.float32)
    rs = rng.uniform(-1, 1, (t, m)).astype(np.float32)
    got = program.run({"x": xs, "r": rs})
    normed = xs / np.sqrt((xs * xs).mean(-1, keepdims=True) + 1e-6)
    assert nmse(vec_dot_round(xs, ty) @ wd.T, got["plain"]) < 1e-10
    # the norm's last bits differ from numpy's on some drivers: a few int8 values then round the
    # other way (NVIDIA: nmse 7e-8)
    assert nmse(vec_dot_round(normed, ty) @ wd.T + rs, got["normed"]) < 1e-6


@pytest.mark.parametrize(("kernels", "s"), [("gpu", 700), ("cpu", 700), ("cpu", 500)])
def test_attention_split_over_kv_length(vulkan, monkeypatch, kernels, s):
    """A long cache is split over workgroups and merged by attn_combine. The per-row kernel
    (lavapipe's) walks a cache whole, and only up to ATTN_ROWS_MAX elements a head: past about
    42k lavapipe returns garbage from it, so longer caches take the split kernels there too."""
    from llmrt_vulkan.lower import ATTN_ROWS_MAX

    monkeypatch.setattr(vulkan.runtime, "cpu", kernels == "cpu")
    t, hq, hkv, d = 2, 4, 2, 64
    rng = np.random.default_rng(7)
    feeds = {
        "q": rng.normal(size=(t, hq, d)).astype(np.float32),
        "k": rng.normal(size=(s, hkv, d)).astype(np.float16),
        "v": rng.normal(size=(s, hkv, d)).astype(np.float16),
        "mask": np.where(rng.uniform(size=(t, s)) < 0.2, -np.inf, 0).astype(np.float32),
    }
    g = Graph("attn")
    q = g.input("q", (t, hq, d))
    k, v = g.input("k", (s, hkv, d), GGMLType.F16), g.input("v", (s, hkv, d), GGMLType.F16)
    g.output("out", g.flash_attn_ext(q, k, v, g.input("mask", (t, s)), scale=0.125))
    program = vulkan.compile(g, {})
    rows = kernels == "cpu" and s * d <= ATTN_ROWS_MAX
    assert any(d.shader == "flash_attn_rows" for d in program.dispatches) == rows
    assert any(d.shader == "attn_combine" for d in program.dispatches) == (not rows)
    got = program.run(feeds)["out"]
    kk = np.repeat(feeds["k"].astype(np.float32), hq // hkv, axis=1)
    vv = np.repeat(feeds["v"].astype(np.float32), hq // hkv, axis=1)
    scores = np.einsum("thd,shd->ths", feeds["q"], kk) * 0.125 + feeds["mask"][:, None, :]
    w = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("ths,shd->thd", w / w.sum(-1, keepdims=True), vv)
    assert nmse(want, got) < 1e-5


@pytest.mark.parametrize("kernels", ["gpu", "gpu-3-workgroups", "cpu"])
def test_producers_fused_into_mat_vec_prologue(vulkan, monkeypatch, kernels):
    """On the GPU kernels a weighted rms_norm, a swiglu and split attention read only by integer
    mat-vecs get no dispatch: each mat-vec workgroup makes its q8 blocks from their inputs
    (matvec_q8p), then takes every PROLOGUE_WGS-th group of rows. Equal to the CPU backend up to
    the q8 rounding of values that differ in their last bits."""
    import llmrt_vulkan.launch

    monkeypatch.setattr(vulkan.runtime, "cpu", kernels == "cpu")
    if kernels == "gpu-3-workgroups":
        monkeypatch.setattr(llmrt_vulkan.launch, "PROLOGUE_WGS", 3)
    cpu = registry().entry("cpu").devices[0]
    t, hq, hkv, s, d, n, f = 2, 4, 2, 200, 32, 128, 192
    rng = np.random.default_rng(11)
    ty = GGMLType.Q4_0
    shapes = {"wq": (n, n), "wg": (f, n), "wu": (f, n), "wd": (n, f), "wo": (n, hq * d)}
    raw = {
        k: quantize(rng.uniform(-1, 1, sh).astype(np.float32), ty).reshape(sh[0], -1)
        for k, sh in shapes.items()
    }
    nw = rng.uniform(0.5, 1.5, n).astype(np.float32)
    g = Graph("block")
    x = g.input("x", (t, n))
    normed = g.mul(g.rms_norm(x, 1e-5), g.weight("nw", (n,), GGMLType.F32))
    w = {k: g.weight(k, sh, ty) for k, sh in shapes.items()}
    q = g.mul_mat(w["wq"], normed)
    glu = g.swiglu(g.mul_mat(w["wg"], normed), g.mul_mat(w["wu"], normed))
    h = g.add(g.mul_mat(w["wd"], glu), q)
    kk, vv = g.input("k", (s, hkv, d), GGMLType.F16), g.input("v", (s, hkv, d), GGMLType.F16)
    att = g.flash_attn_ext(g.reshape(h, t, hq, d), kk, vv, g.input("mask", (t, s)), scale=0.2)
    g.output("out", g.add(g.mul_mat(w["wo"], g.reshape(att, t, hq * d)), h))
    feeds = {
        "x": rng.normal(size=(t, n)).astype(np.float32),
        "k": rng.normal(size=(s, hkv, d)).astype(np.float16),
        "v": rng.normal(size=(s, hkv, d)).astype(np.float16),
        "mask": np.where(rng.uniform(size=(t, s)) < 0.2, -np.inf, 0).astype(np.float32),
    }
    results = []
    for dev in (vulkan, cpu):
        bound = {k: dev.upload(WeightData(k, ty, shapes[k], raw[k])) for k in shapes}
        bound["nw"] = dev.upload(WeightData("nw", GGMLType.F32, (n,), nw))
        program = dev.compile(g, bound)
        results.append(program.run(feeds)["out"])
        if dev is vulkan:
            shaders = [d.shader for d in program.dispatches]
            fused = kernels != "cpu"
            assert fused == all(
                name not in shaders for name in ("norm", "quantize_q8", "attn_combine")
            )
            assert fused == (sum(name.startswith("matvec_q8p") for name in shaders) == 5)
    assert nmse(results[1], results[0]) < 1e-5


@pytest.mark.parametrize("kernels", ["gpu", "cpu"])
def test_lookup_in_a_table_larger_than_a_binding(vulkan, monkeypatch, kernels):
    """A table bigger than maxStorageBufferRange (lavapipe: 128 MiB; Gemma 3's embedding is 170)
    is looked up a binding's range of rows at a time, each dispatch writing the rows whose ids
    fall in its range."""
    monkeypatch.setattr(vulkan.runtime, "cpu", kernels == "cpu")
    m, k = 1000, 64
    data = np.random.default_rng(4).uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(data, GGMLType.Q8_0).reshape(m, -1)
    w = vulkan.upload(WeightData("table", GGMLType.Q8_0, (m, k), raw))
    g = Graph("lookup")
    ids = g.input("ids", (6,), GGMLType.I32)
    lookup = g.get_rows(g.weight("table", (m, k), GGMLType.Q8_0), ids)
    g.output("out", lookup)
    monkeypatch.setattr(vulkan.runtime, "max_range", 300 * 68)  # 256 rows a binding: 4 ranges
    assert vulkan.supports_op(lookup)
    rows = np.array([999, 0, 255, 256, 511, 768], np.int32)  # first and last of ranges
    got = vulkan.compile(g, {"table": w}).run({"ids": rows})["out"]
    want = dequantize(quantize(data, GGMLType.Q8_0), GGMLType.Q8_0, (m, k))[rows]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.id)
def test_the_gpu_kernels_conform_on_lavapipe_too(vulkan, case, monkeypatch):
    """lavapipe is a CPU device, so it runs the barrier-free per-row kernels; the workgroup
    kernels a GPU runs (LLMRT_VULKAN_KERNELS=gpu) are checked here on lavapipe as well."""
    monkeypatch.setattr(vulkan.runtime, "cpu", False)
    assert check_case(vulkan, case) == "ok"


@pytest.mark.parametrize(
    ("t", "past", "hq", "hkv", "d", "mask", "softcap"),
    [
        (100, 30, 4, 2, 64, "causal", 0.0),  # partial tiles, a cache with earlier tokens
        (40, 260, 8, 2, 128, "random", 0.0),  # four heads a KV head, masked keys anywhere
        (16, 684, 4, 2, 64, "random", 0.0),  # split over the KV length: attn_combine merges
        (24, 0, 3, 3, 80, None, 30.0),  # no mask, soft-capped scores, one head a KV head
        (40, 90, 4, 1, (128, 64), "causal", 0.0),  # values narrower than the keys
    ],
)
def test_prompt_attention_on_cooperative_matrices(vulkan, monkeypatch, t, past, hq, hkv, d,
                                                  mask, softcap):  # fmt: skip
    """Where the device has matrix units llmrt uses, a prompt's attention over an f16 cache runs
    flash_attn_coop: S = Q K^T and P V as f16 products into f32, an online softmax between them,
    blocks of keys every row masks skipped; as close to f32 attention as flash_attn's."""
    if vulkan.runtime.coopmat_attn is None:
        pytest.skip("the device has no cooperative matrix product llmrt uses")
    monkeypatch.setattr(vulkan.runtime, "cpu", False)
    s, (dk, dv) = past + t, d if isinstance(d, tuple) else (d, d)
    rng = np.random.default_rng(t + s)
    feeds = {
        "q": rng.normal(size=(t, hq, dk)).astype(np.float32),
        "k": rng.normal(size=(s, hkv, dk)).astype(np.float16),
        "v": rng.normal(size=(s, hkv, dv)).astype(np.float16),
    }
    if mask == "causal":  # token i sees the cache and itself
        feeds["mask"] = np.where(np.arange(s) > past + np.arange(t)[:, None], -np.inf, 0)
    elif mask == "random":
        feeds["mask"] = np.where(rng.uniform(size=(t, s)) < 0.3, -np.inf, 0)
        feeds["mask"][:, 64:160] = -np.inf  # whole blocks of keys masked for every row
    g = Graph("attn")
    q = g.input("q", (t, hq, dk))
    k, v = g.input("k", (s, hkv, dk), GGMLType.F16), g.input("v", (s, hkv, dv), GGMLType.F16)
    m = g.input("mask", (t, s)) if mask else None
    att = g.flash_attn_ext(q, k, v, m, scale=0.125, softcap=softcap)
    g.output("out", att)
    program = vulkan.compile(g, {})
    shaders = [d.shader for d in program.dispatches]
    assert shaders[0] == vulkan.runtime.coopmat_attn, shaders
    if "mask" in feeds:
        feeds["mask"] = feeds["mask"].astype(np.float32)
    got = program.run(feeds)["out"]
    want = reference.flash_attn_ext(att, feeds["q"], feeds["k"], feeds["v"], feeds.get("mask"))
    assert nmse(want, got) < 1e-5


@pytest.mark.parametrize("t", [150, 300])
@pytest.mark.parametrize("subgroups", ["fixed", "required"])
@pytest.mark.parametrize("wtype", [GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.F16])
def test_prompt_matmul_on_cooperative_matrices(vulkan, monkeypatch, wtype, subgroups, t):
    """Where the device has matrix units llmrt uses (VK_KHR_cooperative_matrix: NVIDIA; lavapipe
    from Mesa 26), a prompt's matmul runs matmul_coop, or its _wide variant from WIDE_FROM
    tokens, its tiles cut at both edges by these shapes (150 tokens: 64 x 64 tiles; 300: 64 x 128
    on lavapipe, 64 x 256 on NVIDIA); its f16 products stay as close to the f32 ones as
    conformance's.
    "required": on a logical device made as for one whose subgroup size varies (RDNA3), the
    pipelines require the variant's size (VK_EXT_subgroup_size_control)."""
    from llmrt_vulkan.runtime import Runtime

    if vulkan.runtime.coopmat is None:
        pytest.skip("the device has no cooperative matrix product llmrt uses")
    if subgroups == "required":
        varying = {**vulkan._info.properties, "min_subgroup_size": 1}
        monkeypatch.setattr(vulkan, "_runtime", Runtime(vulkan.vk, vulkan.physical, varying))
        assert vulkan.runtime.coopmat_subgroup == vulkan._info.properties["max_subgroup_size"]
    monkeypatch.setattr(vulkan.runtime, "cpu", False)
    from llmrt_vulkan.shaders import WIDE_FROM

    # the wide variant where it makes 64 workgroups or more: 33 x 2 on NVIDIA, 33 x 3 on lavapipe
    m, k = (2100, 256) if t >= WIDE_FROM else (200, 512)
    rng = np.random.default_rng(4)
    data = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(data, wtype).reshape(m, -1)
    w = vulkan.upload(WeightData("w", wtype, (m, k), raw))
    g = Graph("prompt")
    g.output("out", g.mul_mat(g.weight("w", (m, k), wtype), g.input("x", (t, k))))
    program = vulkan.compile(g, {"w": w})
    wide = "_wide" if t >= WIDE_FROM else ""
    assert [d.shader for d in program.dispatches] == [vulkan.runtime.coopmat + wide]
    x = rng.uniform(-1, 1, (t, k)).astype(np.float32)
    want = x @ dequantize(raw, wtype, (m, k)).T
    assert nmse(want, program.run({"x": x})["out"]) < 1e-5
