"""The CPU backend's numba kernels against the numpy reference (llmrt.reference), the oracle.

Activation quantization must round exactly as the reference does (bit for bit); products and the
other kernels are held to the conformance suite's NMSE thresholds, and where the reference's own
order of operations is followed (norms, rope, get_rows, GELU), to exact equality.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest

from llmrt import reference
from llmrt.gguf import GGMLType, quantize
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph, Op
from llmrt.testing.conformance import NMSE_MATMUL, nmse
from llmrt_cpu import jit, kernels, ops, quant, simd
from llmrt_cpu.backend import CPUBackend, CPUProgram

T = GGMLType
BLOCK_32 = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL)
K_QUANTS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
QUANTIZED = BLOCK_32 + K_QUANTS
# Where each type keeps its f16 scales (d, and dmin or m), by byte offset within a block.
F16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.IQ4_NL: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}  # fmt: skip
# Types llmrt.gguf can quantize to; the others get random valid blocks only.
HAS_QUANTIZER = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K}


class Node:
    """The little of an IR node that a reference kernel reads."""

    def __init__(self, shape: tuple[int, ...] = (), **params) -> None:
        self.shape = shape
        self.params = params


def _activations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform values, with blocks that exercise the rounding: all zeros, one huge element, ties
    (exact halves after scaling), tiny magnitudes (subnormal f16 scales), negative peaks."""
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    if shape[-1] >= 64:
        flat[0, :32] = 0.0
        flat[0, 32:64] = np.float32(1e-6) * flat[0, 32:64]
    if flat.shape[0] > 1:
        flat[1, 0] = -50.0
        flat[1, 1:32] = np.arange(31, dtype=np.float32) - 15.5  # halves of 127/50 steps
    if flat.shape[0] > 2:
        flat[2, :] = np.float32(3e-5) * np.sign(flat[2, :])
    return x


def _random_blocks(rng: np.random.Generator, weight_type: GGMLType, m: int, k: int) -> np.ndarray:
    """Random bytes as blocks of `weight_type`, with finite f16 scales of a sensible size."""
    blocks_per_row = k // weight_type.block_size
    raw = rng.integers(0, 256, (m, blocks_per_row, weight_type.type_size), dtype=np.uint8)
    for at in F16_FIELDS[weight_type]:
        scales = rng.uniform(-0.05, 0.05, (m, blocks_per_row)).astype(np.float16)
        raw[:, :, at : at + 2] = scales.view(np.uint8).reshape(m, blocks_per_row, 2)
    return raw.reshape(m, -1)


def _weight(rng: np.random.Generator, weight_type: GGMLType, m: int, k: int, random_blocks: bool):
    """A weight as the CPU device binds it (raw blocks, or an f32/f16 array) and as the
    reference binds it."""
    if random_blocks:
        raw = _random_blocks(rng, weight_type, m, k)
    else:
        values = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        raw = quantize(values, weight_type).reshape(m, -1)
    if weight_type in (T.F32, T.F16):
        array = raw.view(np.float32 if weight_type == T.F32 else np.float16).reshape(m, k)
        return array, array
    return raw, reference.QuantizedWeight(raw, weight_type, (m, k))


# ---- compiling and caching ----------------------------------------------------------------------


def test_a_kernels_cache_goes_stale_when_any_kernel_source_changes(tmp_path):
    """A kernel inlines helpers and LLVM intrinsics from the package's other files (simd.py):
    numba's own stamp, its defining file only, would keep stale machine code after an edit
    there. Each cached kernel is stamped with all the package's sources."""
    (tmp_path / "quant.py").write_text("def kernel(): pass\n")
    (tmp_path / "simd.py").write_text("def intrinsic(): pass\n")
    before = jit.sources_stamp(tmp_path)
    (tmp_path / "simd.py").write_text("def intrinsic(): return 1\n")
    assert jit.sources_stamp(tmp_path) != before
    package = Path(quant.__file__).parent
    for kernel in (quant.matmul_q32_rows, quant.matmul_qk_rows, kernels.attention):
        assert kernel._cache._impl.locator.get_source_stamp() == jit.sources_stamp(package)


# ---- scalar conversions -------------------------------------------------------------------------


def test_f16_to_f32_matches_numpy_on_every_pattern():
    ours = np.array([quant.f16_bits_to_f32(b) for b in range(1 << 16)], dtype=np.float32)
    np.testing.assert_array_equal(ours, quant.F16_TO_F32)  # nan == nan here


def test_probabilities_round_to_f16_as_numpy_rounds_them():
    """The attention kernel's branch-free rounding of probabilities: every f16 value in [0, 1],
    every midpoint between two (ties go to even), and random values down to 1e-12."""
    exact = np.arange(0, 0x3C01, dtype=np.uint16).view(np.float16).astype(np.float64)
    midpoints = (exact[:-1] + exact[1:]) / 2
    rng = np.random.default_rng(0)
    spread = 10.0 ** rng.uniform(-12, 0, 100_000)
    values = np.concatenate([exact, midpoints, spread]).astype(np.float32)
    ours = np.array([kernels.round_f16_unit(v) for v in values], dtype=np.float32)
    np.testing.assert_array_equal(ours, values.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("to_bf16", [False, True])
def test_rounding_to_f16_and_bf16_matches_numpy(to_bf16):
    rng = np.random.default_rng(0)
    # every magnitude class: f16 subnormals, normals, ties, past f16's range, zeros
    x = np.concatenate([
        rng.uniform(-1, 1, 4000), rng.uniform(-7e4, 7e4, 4000), rng.uniform(-1e-6, 1e-6, 4000),
        np.float32(2.0) ** np.arange(-30, 20), [0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0],
        1 + (np.arange(64) + 0.5) * 2.0**-10,  # exact halfway cases between f16 values
    ]).astype(np.float32).reshape(1, -1)  # fmt: skip
    out = np.empty_like(x)
    quant.round_rows(x, to_bf16, out)
    with np.errstate(over="ignore"):  # past f16's range is inf, on both sides
        expected = reference._round_bf16(x) if to_bf16 else x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out, expected)


# ---- activations to q8 blocks: bit-exact with the reference's rounding --------------------------


@pytest.mark.parametrize("t,k", [(1, 32), (3, 64), (5, 576), (17, 1536)])
def test_q8_0_and_q8_1_round_as_the_reference(t, k):
    x = _activations(np.random.default_rng(k + t), (t, k))
    xq, xd, xs, xsum = quant.quantize_activations(x, T.Q4_1)  # q8_1: q8_0 plus block sums
    values = (xq.reshape(t, -1, 32).astype(np.float32) * xd[..., None]).reshape(t, k)
    np.testing.assert_array_equal(values, reference._round_q8_0(x))
    # ggml's q8_1 sum: f16 of the unrounded scale times the sum of the levels
    amax = np.abs(x.reshape(t, -1, 32)).max(axis=-1)
    sums = xq.reshape(t, -1, 32).astype(np.int32).sum(axis=-1).astype(np.float32)
    np.testing.assert_array_equal(xs, (amax / np.float32(127) * sums).astype(np.float16))
    np.testing.assert_array_equal(xsum, sums.astype(np.int32))  # exact, for Q4_0 and Q5_0
    xq0, xd0, xs0, xsum0 = quant.quantize_activations(x, T.Q4_0)
    np.testing.assert_array_equal(xq0, xq)
    np.testing.assert_array_equal(xd0, xd)
    np.testing.assert_array_equal(xsum0, xsum)
    assert xs0.shape == (t, 0)


@pytest.mark.parametrize("t,k", [(1, 256), (4, 512), (9, 2048)])
def test_q8_k_rounds_as_the_reference(t, k):
    x = _activations(np.random.default_rng(k + t), (t, k))
    x[0, 300 % k] = 0.0
    x[-1, 5], x[-1, 9] = 3.0, -3.0  # two elements of the largest magnitude: the first one's sign
    xq, xd, xsum = quant.quantize_activations(x, T.Q4_K)
    values = (xq.reshape(t, -1, 256).astype(np.float32) * xd[..., None]).reshape(t, k)
    np.testing.assert_array_equal(values, reference._round_q8_k(x))
    np.testing.assert_array_equal(xsum, xq.reshape(t, -1, 16).astype(np.int32).sum(axis=-1))


# ---- products -----------------------------------------------------------------------------------

FLOATS = (T.F32, T.F16, T.BF16)
MUL_MAT_SHAPES = ((1, 1), (67, 1), (33, 7), (128, 64), (5, 33), (19, 100))  # (m, t)


def _ks(weight_type: GGMLType) -> tuple[int, ...]:
    return (256, 512) if weight_type.block_size == 256 else (32, 96, 576)


@pytest.mark.parametrize("weight_type", QUANTIZED + FLOATS, ids=lambda t: t.name)
def test_mul_mat_matches_reference(weight_type):
    rng = np.random.default_rng(int(weight_type))
    sources = [False, True] if weight_type in HAS_QUANTIZER else [True]
    if weight_type in FLOATS:
        sources = [False]
    for random_blocks in sources:
        for k in _ks(weight_type):
            for m, t in MUL_MAT_SHAPES:
                ours, theirs = _weight(rng, weight_type, m, k, random_blocks)
                x = _activations(rng, (t, k))
                expected = reference.mul_mat(Node((t, m)), theirs, x)
                got = quant.mul_mat(weight_type, ours, x)
                assert got.shape == (t, m)
                err = nmse(expected, got)
                assert err <= NMSE_MATMUL, f"{weight_type.name} m={m} k={k} t={t}: nmse {err:.3g}"
                # The integer dot products are exact: only float rounding separates the two,
                # and for Q4_1 / Q5_1 ggml's f16 rounding of q8_1's block sum (the reference
                # keeps that sum in f32).
                tight = 1e-5 if weight_type in quant.Q8_1_TYPES else 1e-6
                assert err <= tight, f"{weight_type.name} m={m} k={k} t={t}: nmse {err:.3g}"


def test_mul_mat_row_results_do_not_depend_on_the_batch():
    """A row's product is the same alone or in a batch (decoding beside other sequences)."""
    rng = np.random.default_rng(5)
    for weight_type in (T.Q4_1, T.Q6_K, T.F16):
        ours, _ = _weight(rng, weight_type, 40, 512, False)
        x = rng.uniform(-1, 1, (9, 512)).astype(np.float32)
        batch = quant.mul_mat(weight_type, ours, x)
        alone = quant.mul_mat(weight_type, ours, x[4:5].copy())
        np.testing.assert_array_equal(batch[4:5], alone)


@pytest.mark.parametrize("weight_type", QUANTIZED + (T.BF16,), ids=lambda t: t.name)
def test_get_rows_dequantizes_as_the_reference(weight_type):
    rng = np.random.default_rng(int(weight_type) + 100)
    k = 512 if weight_type.block_size == 256 else 96
    for random_blocks in [False, True] if weight_type in HAS_QUANTIZER else [True]:
        if weight_type == T.BF16:
            random_blocks = False
        raw, table = _weight(rng, weight_type, 40, k, random_blocks)
        ids = rng.integers(0, 40, 13).astype(np.int32)
        got = quant.get_rows(weight_type, raw, k, ids)
        np.testing.assert_array_equal(got, reference.get_rows(None, table, ids))


# ---- norms, activations, rope -------------------------------------------------------------------

ROW_SHAPES = ((1, 1), (7, 65), (20, 576), (3, 2048))


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_is_the_reference(shape):
    x = np.random.default_rng(1).uniform(-3, 3, shape).astype(np.float32)
    out = np.empty_like(x)
    kernels.rms_norm(x, 1e-6, out)
    np.testing.assert_array_equal(out, reference.rms_norm(Node(eps=1e-6), x))
    w = np.random.default_rng(2).uniform(-1, 1, shape[-1]).astype(np.float32)
    kernels.rms_norm_mul(x, 1e-6, w, out)
    np.testing.assert_array_equal(out, reference.rms_norm(Node(eps=1e-6), x) * w)


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_gelu_and_geglu_are_the_reference(shape):
    rng = np.random.default_rng(3)
    gate = rng.uniform(-12, 12, shape).astype(np.float32)  # both sides of the exact cut-offs
    up = rng.uniform(-1, 1, shape).astype(np.float32)
    out = np.empty_like(gate)
    kernels.gelu(gate, kernels.GELU_F16, out)
    np.testing.assert_array_equal(out, reference.gelu_tanh(gate))
    kernels.geglu(gate, up, kernels.GELU_F16, out)
    np.testing.assert_array_equal(out, reference.gelu_tanh(gate) * up)


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_silu_and_swiglu_match_the_reference(shape):
    rng = np.random.default_rng(4)
    gate = rng.uniform(-20, 20, shape).astype(np.float32)
    up = rng.uniform(-1, 1, shape).astype(np.float32)
    out = np.empty_like(gate)
    kernels.silu(gate, out)
    assert nmse(reference.silu(gate), out) <= 1e-12
    kernels.swiglu(gate, up, out)
    assert nmse(reference.silu(gate) * up, out) <= 1e-12


@pytest.mark.parametrize("mode", [ROPE_NORMAL, ROPE_NEOX], ids=["normal", "neox"])
@pytest.mark.parametrize("t,h,d,n_dims", [(1, 1, 64, 64), (7, 3, 64, 64), (5, 4, 128, 96),
                                          (33, 9, 64, 64), (4, 2, 256, 256)])  # fmt: skip
def test_rope_matches_the_reference(mode, t, h, d, n_dims):
    rng = np.random.default_rng(t * h)
    x = rng.uniform(-1, 1, (t, h, d)).astype(np.float32)
    pos = (np.arange(t) * 7 + 3000).astype(np.int32)
    factors = rng.uniform(1, 8, n_dims // 2).astype(np.float32)
    for freq_factors in (None, factors):
        params = dict(n_dims=n_dims, mode=mode, freq_base=10000.0, freq_scale=0.5,
                      attn_factor=1.0)  # fmt: skip
        expected = reference.rope(Node(**params), x, pos, freq_factors)
        inv_freq = 10000.0 ** (-np.arange(n_dims // 2, dtype=np.float64) * 2.0 / n_dims)
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.astype(np.float64)
        out = np.empty_like(x)
        kernels.rope(x, pos, inv_freq, 0.5, 1.0, mode == ROPE_NEOX, out)
        assert nmse(expected, out) <= 1e-12


# ---- attention ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t,hq,hkv,s,d",
    [(1, 9, 3, 256, 64), (7, 4, 1, 33, 256), (5, 2, 2, 16, 32), (1, 4, 1, 700, 256),
     (64, 9, 3, 64, 64), (3, 6, 2, 129, 60), (1, 1, 1, 1, 8), (40, 8, 2, 90, 80)],
)  # fmt: skip
@pytest.mark.parametrize("cache", [T.F16, T.F32], ids=lambda t: t.name)
@pytest.mark.parametrize("softcap", [0.0, 30.0])
@pytest.mark.parametrize("masked", [True, False])
def test_attention_matches_the_reference(t, hq, hkv, s, d, cache, softcap, masked):
    rng = np.random.default_rng(t + s + d)
    dtype = np.float16 if cache == T.F16 else np.float32
    q = rng.uniform(-1, 1, (t, hq, d)).astype(np.float32) * 3
    k = rng.uniform(-1, 1, (s, hkv, d)).astype(dtype)
    v = rng.uniform(-1, 1, (s, hkv, d)).astype(dtype)
    visible = np.arange(s)[None, :] <= (np.arange(t)[:, None] + s - t)
    mask = np.where(visible, 0.0, -np.inf).astype(np.float32) if masked else None
    seen = slice(None)
    if masked and t > 1:  # a padded batch's row that sees nothing (zeros, as ggml's), a bias
        mask[-1, :] = -np.inf
        mask[0, 0] = -0.75
        seen = slice(0, t - 1)
    node = Node(scale=1 / math.sqrt(d), softcap=softcap)
    with np.errstate(invalid="ignore"):  # the reference's row that sees nothing: nan
        expected = reference.flash_attn_ext(node, q, k, v, mask)
    args = (mask if masked else ops._NO_MASK, masked, node.params["scale"], softcap,
            cache == T.F16, quant.F16_TO_F32)  # fmt: skip
    k_bits, v_bits = ops._cache_operand(k), ops._cache_operand(v)
    one_by_one = np.empty((t, hq, d), dtype=np.float32)
    for i in range(t):  # each query alone, on the calling thread, as decoding runs it
        row_mask = args[0][i : i + 1] if masked else args[0]
        kernels.attention_serial(q[i : i + 1], k_bits, v_bits, row_mask, *args[1:],
                                 one_by_one[i : i + 1])  # fmt: skip
    assert nmse(expected[seen], one_by_one[seen]) <= NMSE_MATMUL
    # the same f16 roundings: only the order of float sums differs (and so, rarely, which way a
    # probability near an f16 midpoint rounds)
    assert nmse(expected[seen], one_by_one[seen]) <= 1e-8
    if seen.stop is not None:
        assert not one_by_one[-1].any()  # the row that sees nothing
    # all queries at once, as a prompt runs them: the same bits as one by one
    out = np.empty((t, hq, d), dtype=np.float32)
    keys_t, values = kernels.attention_scratch(max(t, 2), k.shape, v.shape)
    scratch = np.full(keys_t, np.nan, np.float32), np.full(values, np.nan, np.float32)
    kernels.attention(q, k_bits, v_bits, *args, *scratch, out)
    np.testing.assert_array_equal(out, one_by_one)


@pytest.mark.parametrize(
    "hq,hkv,s,d", [(9, 3, 1500, 64), (4, 1, 700, 256), (6, 2, 1029, 60), (8, 8, 520, 80)]
)
@pytest.mark.parametrize("cache", [T.F16, T.F32], ids=lambda t: t.name)
@pytest.mark.parametrize("softcap", [0.0, 30.0])
@pytest.mark.parametrize("masked", [True, False])
def test_long_cache_attention_split_over_threads_gives_the_same_bits(hq, hkv, s, d, cache,
                                                                     softcap, masked):  # fmt: skip
    """One token over a long cache (decoding deep in a context): attention_long, split over the
    threads, computes what attention_serial computes on one, to the bit."""
    rng = np.random.default_rng(s + d)
    dtype = np.float16 if cache == T.F16 else np.float32
    q = rng.uniform(-1, 1, (1, hq, d)).astype(np.float32) * 3
    k = ops._cache_operand(rng.uniform(-1, 1, (s, hkv, d)).astype(dtype))
    v = ops._cache_operand(rng.uniform(-1, 1, (s, hkv, d)).astype(dtype))
    mask = np.zeros((1, s), np.float32)
    if masked:  # cells of other sequences and a few biases, as a batch's mask has
        mask[0, rng.random(s) < 0.3] = -np.inf
        mask[0, 7] = -0.5
    args = (mask if masked else ops._NO_MASK, masked, 1 / math.sqrt(d), softcap,
            cache == T.F16, quant.F16_TO_F32)  # fmt: skip
    serial, split = np.empty((1, hq, d), np.float32), np.full((1, hq, d), np.nan, np.float32)
    kernels.attention_serial(q, k, v, *args, serial)
    for threads in (1, 2):
        jit.set_threads(threads)
        kernels.attention_long(q, k, v, *args, split)
        np.testing.assert_array_equal(split, serial)
    jit.set_threads(None)


# ---- the device: lowering, threads, compile note ------------------------------------------------


def _small_graph() -> Graph:
    g = Graph("lowering")
    x = g.input("x", (3, 64))
    h = g.rms_norm(x, 1e-5)
    y = g.mul_mat(g.weight("w", (32, 64), T.Q4_0), h)
    g.output("out", g.swiglu(y, y))
    return g


def _steps(g: Graph, bindings: dict) -> CPUProgram:
    """The program run step by step, as prompts are (decode graphs otherwise get a tape, which
    tests/plugins/test_cpu_tape.py checks against this)."""
    return CPUProgram(g, bindings, use_tape=False)


def test_cpu_program_lowers_to_numba_kernels_and_matches_the_reference():
    g = _small_graph()
    values = np.random.default_rng(0).uniform(-1, 1, (32, 64)).astype(np.float32)
    raw = quantize(values, T.Q4_0).reshape(32, -1)
    weight = reference.QuantizedWeight(raw, T.Q4_0, (32, 64))
    program = _steps(g, {"w": weight})
    chosen = {node.op: kernel for _, kernel, node, _, _ in program.steps}
    for op in (Op.RMS_NORM, Op.MUL_MAT, Op.SWIGLU):
        assert chosen[op] is not reference.KERNELS[op], f"{op.value} still runs the reference"
    x = np.random.default_rng(1).uniform(-1, 1, (3, 64)).astype(np.float32)
    expected = reference.ReferenceProgram(g, {"w": weight}).run({"x": x})["out"]
    assert nmse(expected, program.run({"x": x})["out"]) <= 1e-7


@pytest.mark.parametrize("t", [1, 5, 40])
def test_products_sharing_an_activation_quantize_it_once_and_never_stale(t):
    """q, k and v (and gate and up) multiply one activation: the program converts it once per
    family and run, and a new run's activation is converted again."""
    g = Graph("shared activation")
    h = g.rms_norm(g.input("x", (t, 256)), 1e-5)
    types = {"a": T.Q4_0, "b": T.Q8_0, "c": T.Q4_K, "d": T.Q4_1, "e": T.F16}
    for name, weight_type in types.items():
        g.output(name, g.mul_mat(g.weight(name, (24, 256), weight_type), h))
    rng = np.random.default_rng(t)
    bindings = {}
    for name, weight_type in types.items():
        raw = quantize(rng.uniform(-1, 1, (24, 256)).astype(np.float32), weight_type)
        raw = raw.reshape(24, -1)
        if weight_type == T.F16:
            bindings[name] = raw.view(np.float16).reshape(24, 256)
        else:
            bindings[name] = reference.QuantizedWeight(raw, weight_type, (24, 256))
    program = _steps(g, bindings)
    oracle = reference.ReferenceProgram(g, bindings)
    converted = []
    original = quant.prepare_activations

    def counting(weight_type, x):
        converted.append(quant.activation_family(weight_type))
        return original(weight_type, x)

    quant.prepare_activations = counting
    try:
        for seed in range(2):
            x = np.random.default_rng(seed).uniform(-1, 1, (t, 256)).astype(np.float32)
            got, expected = program.run({"x": x}), oracle.run({"x": x})
            for name in types:
                assert nmse(expected[name], got[name]) <= 1e-5, name
    finally:
        quant.prepare_activations = original
    assert converted == ["q8_0", "q8_K", "q8_1", "f16"] * 2


@pytest.mark.parametrize("weight_type", [T.Q4_1, T.Q5_0, T.Q6_K])
def test_products_of_one_activation_and_type_are_one_kernel_call_with_the_same_results(
    weight_type, monkeypatch
):
    """q, k and v of one type multiply one activation in one call over a row table; each gets
    exactly what its product alone gives, on every run, and a product of another type or
    activation is not folded in."""
    g = Graph("qkv")
    x = g.input("x", (2, 256))
    h = g.rms_norm(x, 1e-5)
    weights = {  # name: rows, type, activation
        "q": (96, weight_type, h), "k": (32, weight_type, h), "v": (32, weight_type, h),
        "other": (16, T.Q8_0, h), "elsewhere": (16, weight_type, x),
    }  # fmt: skip
    rng = np.random.default_rng(7)
    raws, bindings = {}, {}
    for name, (rows, wtype, activation) in weights.items():
        g.output(name, g.mul_mat(g.weight(name, (rows, 256), wtype), activation))
        values = rng.uniform(-1, 1, (rows, 256)).astype(np.float32)
        raws[name] = quantize(values, wtype).reshape(rows, -1)
        bindings[name] = reference.QuantizedWeight(raws[name], wtype, (rows, 256))
    program = _steps(g, bindings)
    calls = []
    original = quant.mul_mat_rows
    monkeypatch.setattr(quant, "mul_mat_rows", lambda *a: calls.append(a[1].total) or original(*a))
    for seed in range(2):
        x_value = np.random.default_rng(seed).uniform(-1, 1, (2, 256)).astype(np.float32)
        got = program.run({"x": x_value})
        rows = _rows_normed(x_value)
        for name in ("q", "k", "v"):
            prepared = quant.prepare_activations(weight_type, rows)
            alone = original(weight_type, quant.RowTable([raws[name]]), prepared, 2)
            np.testing.assert_array_equal(got[name], alone)
    assert sorted(calls) == sorted([160, 16, 16] * 2)  # q+k+v, other, elsewhere


def _rows_normed(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    kernels.rms_norm(x, 1e-5, out)
    return out


def test_norm_times_weight_is_one_step_and_exact():
    """rms_norm(x)·w becomes one step where the norm has no other reader; elsewhere it stays."""
    g = Graph("norms")
    x = g.input("x", (5, 64))
    w = g.weight("w", (64,), T.F32)
    fused = g.mul(g.rms_norm(x, 1e-6), w)
    shared_norm = g.rms_norm(g.add(x, x), 1e-6)
    g.output("fused", g.add(fused, x))  # x stays alive past the norm
    g.output("kept", g.mul(shared_norm, w))
    g.output("norm", shared_norm)  # a second reader of this norm: no fusion
    bindings = {"w": np.random.default_rng(0).uniform(-1, 1, 64).astype(np.float32)}
    program = _steps(g, bindings)
    ops_run = [node.op for _, _, node, _, _ in program.steps]
    assert ops_run.count(Op.RMS_NORM) == 1 and ops_run.count(Op.MUL) == 2
    x_value = np.random.default_rng(1).uniform(-2, 2, (5, 64)).astype(np.float32)
    got = program.run({"x": x_value})
    expected = reference.ReferenceProgram(g, bindings).run({"x": x_value})
    for name in ("fused", "kept", "norm"):
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize("dtype", [T.F16, T.F32])
def test_kv_cache_writes_and_windows_are_the_reference(dtype):
    """set_rows into an f16 or f32 cache (values rounded as numpy rounds them, inf and subnormals
    included) and the contiguous window attention reads, against the reference's kernels; an
    out-of-range cell is an error, not a write past the cache."""
    g = Graph("cache")
    cache = g.state("cache", (16, 3, 8), dtype)
    written = g.set_rows(cache, g.input("cells", (4,), T.I32), g.input("rows", (4, 3, 8)))
    g.output("window", g.view(written, (6, 3, 8), (24, 8, 1), offset=48))
    numpy_type = np.float16 if dtype == T.F16 else np.float32
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((4, 3, 8)) * 10.0 ** rng.integers(-9, 6, (4, 3, 8))).astype(
        np.float32
    )
    inputs = {"cells": np.array([2, 5, 3, 7], np.int32), "rows": rows}
    ours, theirs = np.zeros((16, 3, 8), numpy_type), np.zeros((16, 3, 8), numpy_type)
    program = _steps(g, {"cache": ours})
    assert all(step is not reference.KERNELS[node.op] for _, step, node, _, _ in program.steps)
    got = program.run(inputs)["window"]
    with np.errstate(over="ignore"):  # past f16's range: inf, as intended
        expected = reference.ReferenceProgram(g, {"cache": theirs}).run(inputs)["window"]
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(IndexError):
        program.run({**inputs, "cells": np.array([2, 16, 3, 7], np.int32)})


def test_unsupported_shapes_fall_back_to_the_reference():
    g = Graph("batched")
    a = g.state("a", (3, 9, 64), T.F32)
    out = g.mul_mat(a, g.input("b", (12, 5, 64)))
    g.output("out", out)
    fallback = reference.KERNELS[Op.MUL_MAT]
    assert ops.lower(out, fallback) is fallback


def test_set_threads_clamps_and_applies():
    before = jit.threads()
    try:
        assert CPUBackend().set_threads(1) == 1 and numba.get_num_threads() == 1
        assert jit.set_threads(1) == 1
        assert jit.threads() == 1
        assert 1 <= jit.set_threads(None) <= jit.usable_cores() <= len(jit.usable_cpus())
        assert jit.set_threads(10_000) <= numba.config.NUMBA_NUM_THREADS
    finally:
        jit.set_threads(before)


def test_idle_kernel_threads_spin_on_a_quiet_machine_and_sleep_on_a_busy_one():
    assert jit.wait_policy({}, 0, 2) == {"GOMP_SPINCOUNT": "100000"}
    assert jit.wait_policy({}, 1, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert jit.wait_policy({}, 3, 16) == {"GOMP_SPINCOUNT": "100000"}
    assert jit.wait_policy({}, None, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}  # no /proc/loadavg
    assert jit.wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, 0, 2) == {}  # the user's choice wins
    assert jit.wait_policy({"GOMP_SPINCOUNT": "0"}, 5, 2) == {}
    assert "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ  # applied at import


def test_compile_note_is_printed_once_for_our_kernels(capsys, monkeypatch):
    monkeypatch.setattr(jit, "_noted", False)

    class Event:
        def __init__(self, module: str) -> None:
            self.data = {"dispatcher": type("D", (), {"py_func": type("F", (), {})})()}
            self.data["dispatcher"].py_func.__module__ = module

    listener = jit._CompileHook()
    listener.on_start(Event("somebody_else"))
    assert capsys.readouterr().err == ""
    slp = numba.config.SLP_VECTORIZE
    listener.on_start(Event("llmrt_cpu.quant"))
    listener.on_start(Event("llmrt_cpu.kernels"))
    assert numba.config.SLP_VECTORIZE == 1  # on while our kernels compile
    listener.on_end(Event("llmrt_cpu.kernels"))
    listener.on_end(Event("llmrt_cpu.quant"))
    assert slp == numba.config.SLP_VECTORIZE
    assert capsys.readouterr().err == jit.COMPILE_NOTE + "\n"


def test_every_kernel_a_model_runs_is_cached_on_disk(tiny_gguf_with_vocab):
    """A kernel numba cannot cache (one reading a ctypes pointer or a large global array) is
    compiled again by every process: tens of seconds before the first token. A model run on two
    threads, a prompt, decode steps over a short and a long cache, with numba's cache warnings
    as errors."""
    script = f"""
import warnings
from numba.core.errors import NumbaWarning
warnings.simplefilter("error", NumbaWarning)
from llmrt import engine
ctx = engine.load({str(tiny_gguf_with_vocab)!r}, device="cpu", threads=2).context(n_ctx=1024)
ctx.eval(list(range(1, 40)))
ctx.eval([5])
ctx.eval([(i * 7) % 60 + 1 for i in range(600)])
ctx.eval([5])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


# ---- Q4_0 / Q4_1 decode products on blocks repacked 8 rows at a time ----------------------------


@pytest.mark.parametrize("weight_type", [T.Q4_0, T.Q4_1, T.Q8_0])
def test_repacked_blocks_hold_each_rows_scales_and_levels(weight_type):
    """The layout, byte for byte, for the types stored as they are (Q5_0's is checked through
    its products below: its levels are rebuilt from two fields)."""
    rng = np.random.default_rng(11)
    raw, _ = _weight(rng, weight_type, 24, 96, False)
    packed = quant.repack_x8(raw, weight_type)
    levels = 32 if weight_type == T.Q8_0 else 16
    size, head = weight_type.type_size, weight_type.type_size - levels
    flip = 0x80 if weight_type == T.Q8_0 else 0  # Q8_0's levels are stored + 128
    assert packed.shape == (3, 8 * raw.shape[1])
    for g, r, b in [(0, 0, 0), (2, 7, 2), (1, 3, 1)]:
        block = raw[8 * g + r, b * size : (b + 1) * size]
        packed_block = packed[g, b * 8 * size : (b + 1) * 8 * size]
        for field in range(head // 2):  # d, then m
            at = field * 16 + 2 * r
            assert bytes(packed_block[at : at + 2]) == bytes(block[2 * field : 2 * field + 2])
        for c in range(levels // 4):
            at = 8 * head + 32 * c + 4 * r
            expected = block[head + 4 * c : head + 4 * c + 4] ^ np.uint8(flip)
            assert bytes(packed_block[at : at + 4]) == bytes(expected)


@pytest.mark.parametrize("weight_type", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K])
@pytest.mark.parametrize("t", [1, 3, 32, 70])
def test_eight_rows_at_once_is_the_row_by_row_kernel_to_the_bit(weight_type, t):
    """Several weights in one table (q, k and v), rows in groups of 8: the repacked kernel gives
    exactly what the row-by-row kernel gives, for any batch of rows."""
    if weight_type not in quant.X8_TYPES:
        pytest.skip(f"this host does not multiply {weight_type.name} 8 rows at a time")
    rng = np.random.default_rng(t)
    k = 512 if weight_type in quant.Q8_K_TYPES else 256
    raws = [_weight(rng, weight_type, m, k, random_blocks)[0]
            for m, random_blocks in ((64, False), (16, True), (40, False))]  # fmt: skip
    x = _activations(rng, (t, k))
    prepared = quant.prepare_activations(weight_type, x)
    expected = quant.mul_mat_rows(weight_type, quant.RowTable(raws), prepared, t)
    packed = [quant.repack_x8(raw, weight_type) for raw in raws]
    table = quant.RowTable(packed)
    out = np.empty_like(expected)
    kernel = quant.matmul_x8k_rows if weight_type in quant.Q8_K_TYPES else quant.matmul_x8_rows
    kernel(table.addresses, table.rows, table.row_bytes, int(weight_type), *prepared, out)
    np.testing.assert_array_equal(out, expected)
    through_table = quant.mul_mat_rows(weight_type, quant.RowTable(raws, weight_type), prepared, t)
    np.testing.assert_array_equal(through_table, expected)


def _one_group_kernel(variant: int, layout: int):
    """block_x8 on one group block, with the given instructions (a constant, as kernels pass it)."""
    stack = jit.stack_array(8, np.float32)

    @numba.njit
    def one_group(packed, offset, xq, xd, xs, xsum):
        acc_at = stack()
        acc = numba.carray(acc_at, 8)
        for r in range(8):
            acc[r] = 0.0
        simd.block_x8(acc_at, packed, 0, offset, layout, xq, xd, xs, xsum, 0, 0, 1, variant)
        return acc.copy()

    return one_group


_HOST = llvm.get_host_cpu_features()
VARIANTS = {
    simd.X8_AVX2: bool(_HOST.get("avx2")),
    simd.X8_VNNI: bool(_HOST.get("avx512vnni") and _HOST.get("avx512vl") or _HOST.get("avxvnni")),
}


LAYOUTS = {
    T.Q4_0: (simd.X8_Q4, 8), T.Q4_1: (simd.X8_Q4_MIN, 0), T.Q5_0: (simd.X8_Q8, 16),
    T.Q8_0: (simd.X8_Q8, 128),
}  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "weight_type"),
    [(v, wt) for v in sorted(VARIANTS) for wt in LAYOUTS if (v, wt) != (simd.X8_AVX2, T.Q8_0)],
)  # AVX2 sums pairs in 16 bits: Q8_0's levels + 128 would overflow them, so it never gets Q8_0
def test_each_instruction_set_of_the_eight_row_block_is_exact(variant, weight_type):
    """The VNNI and the AVX2 forms of one block of 8 rows against the row-by-row kernel, with
    extreme levels (all 15, all 0, Q8_0's -128 and 127) against activations of ±127."""
    if not VARIANTS[variant]:
        pytest.skip(f"this host cannot run variant {variant}")
    rng = np.random.default_rng(variant)
    raw = _random_blocks(rng, weight_type, 8, 32)
    head = weight_type.type_size - 16
    raw[0, head:] = 0xFF  # every level 15
    raw[1, head:] = 0x00
    x = _activations(rng, (1, 32))
    x[0, :16], x[0, 16:] = 1.0, -1.0  # levels 127 and -127
    if weight_type == T.Q8_0:
        raw[0, 2:] = np.array([-128] * 16 + [127] * 16, np.int8).view(np.uint8)
    prepared = quant.prepare_activations(weight_type, x)
    expected = quant.mul_mat_rows(weight_type, quant.RowTable([raw]), prepared, 1)[0]
    layout, offset = LAYOUTS[weight_type]
    kernel = _one_group_kernel(variant, layout)
    got = kernel(quant.repack_x8(raw, weight_type)[0], offset, *prepared)
    np.testing.assert_array_equal(got, expected)


def _one_super_block_kernel(variant: int, layout: int):
    """block_x8_k on one super-block of 8 rows, with the given instructions."""
    stack = jit.stack_array(8, np.float32)

    @numba.njit
    def one_super_block(packed, xq, xd, xsum):
        acc_at = stack()
        acc = numba.carray(acc_at, 8)
        for r in range(8):
            acc[r] = 0.0
        simd.block_x8_k(acc_at, packed, 0, layout, xq, xd, xsum, 0, 0, 1, variant)
        return acc.copy()

    return one_super_block


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("weight_type", [T.Q4_K, T.Q6_K])
def test_each_instruction_set_of_the_eight_row_super_block_is_exact(variant, weight_type):
    """Q4_K's and Q6_K's 8-row super-blocks against the row-by-row kernel, on both instruction
    sets, with extreme levels and scales (every nibble 15 or 0, Q6_K's scales -128 and 127)
    against activations of ±127."""
    if not VARIANTS[variant]:
        pytest.skip(f"this host cannot run variant {variant}")
    rng = np.random.default_rng(variant + 7)
    raw = _random_blocks(rng, weight_type, 8, 256)
    if weight_type == T.Q4_K:  # d dmin scales[12] qs[128]
        raw[0, 4:16], raw[0, 16:] = 0xFF, 0xFF  # every scale and min 63, every level 15
        raw[1, 16:] = 0x00
    else:  # ql[128] qh[64] scales[16] d
        raw[0, :192], raw[1, :192] = 0xFF, 0x00  # levels 31 and -32
        raw[0, 192:208] = np.array([127, -128] * 8, np.int8).view(np.uint8)
        raw[1, 192:208] = np.array([-128] * 16, np.int8).view(np.uint8)
    x = _activations(rng, (1, 256))
    x[0, :128], x[0, 128:] = 1.0, -1.0
    xq, xd, xsum = quant.prepare_activations(weight_type, x)
    expected = quant.mul_mat_rows(weight_type, quant.RowTable([raw]), (xq, xd, xsum), 1)[0]
    layout = simd.X8_Q4_K if weight_type == T.Q4_K else simd.X8_Q6_K
    kernel = _one_super_block_kernel(variant, layout)
    got = kernel(quant.repack_x8(raw, weight_type)[0], xq, xd, xsum)
    np.testing.assert_array_equal(got, expected)


def _resident_kib(address: int) -> int:
    """Rss of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_a_repacked_weights_file_pages_leave_the_resident_set_and_read_back(tmp_path):
    """Once a weight read from a mapped file is repacked, its pages stop counting in this process
    (they come back, unchanged, if read again); memory of our own is never released."""
    import mmap

    rng = np.random.default_rng(4)
    values = rng.integers(0, 256, (1024, 1088), dtype=np.uint8)  # 1088 B: 32 Q8_0 blocks a row
    path = tmp_path / "weights.bin"
    path.write_bytes(values.tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    raw = np.frombuffer(mapped, dtype=np.uint8).reshape(1024, 1088)
    assert int(raw.sum(dtype=np.int64)) == int(values.sum(dtype=np.int64))  # every page resident
    before = _resident_kib(raw.ctypes.data)
    assert before >= raw.nbytes // 1024 - 4
    assert quant.release_file_pages(raw)
    assert _resident_kib(raw.ctypes.data) <= before - raw.nbytes // 1024 + 8
    np.testing.assert_array_equal(raw, values)  # read back from the file
    own = values.copy()
    assert not quant.release_file_pages(own)
    np.testing.assert_array_equal(own, values)
