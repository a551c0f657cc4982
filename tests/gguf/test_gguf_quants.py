"""(De)quantization of every ggml type against the `gguf` package (the oracle) and, where it has
no codec, against scalar loops written from ggml's C reference, or against error bounds."""

from __future__ import annotations

import warnings

import gguf.quants as gq
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llmrt.gguf import GGMLType, dequantize, quantize
from llmrt.gguf.quants import DEQUANTIZERS, QUANTIZERS

ALL_TYPES = [GGMLType(int(t)) for t in GGMLQuantizationType]
ORACLE_DEQUANT = [t for t in ALL_TYPES if t.is_quantized and GGMLQuantizationType(t) in
                  gq._type_traits]  # fmt: skip
ORACLE_QUANT = [GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                GGMLType.Q5_1, GGMLType.Q8_0]  # fmt: skip
# ggml's test-quantize-fns bounds on its cosine test data (sqrt(sum sq err) / n)
BOUNDS = {GGMLType.Q2_K: 0.0075, GGMLType.Q3_K: 0.0040, GGMLType.Q4_K: 0.002,
          GGMLType.Q5_K: 0.002, GGMLType.Q6_K: 0.002, GGMLType.Q8_K: 0.002,
          GGMLType.Q8_1: 0.002, GGMLType.IQ4_NL: 0.002}  # fmt: skip


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def oracle_dequant(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = gq.dequantize(raw.reshape(1, -1), GGMLQuantizationType(t))
    return np.ascontiguousarray(out, dtype=np.float32).reshape(-1)


def test_every_gguf_type_is_known_with_its_layout():
    for t in GGMLQuantizationType:
        ours = GGMLType(int(t))
        assert ours.name == t.name
        assert t in GGML_QUANT_SIZES and ours in DEQUANTIZERS
        if ours == GGMLType.Q8_1:  # gguf-py lists a stale 40; ggml's block_q8_1 is 36 bytes
            assert (ours.block_size, ours.type_size) == (32, 36)
        else:
            assert (ours.block_size, ours.type_size) == GGML_QUANT_SIZES[t]


@pytest.mark.parametrize("t", ORACLE_DEQUANT, ids=lambda t: t.name)
def test_dequant_random_blocks_bit_exact(t):
    rng = np.random.default_rng(int(t))
    raw = rng.integers(0, 256, 300 * t.type_size, dtype=np.uint8)  # NaN/inf scales included
    assert same_bits(dequantize(raw, t, (300 * t.block_size,)), oracle_dequant(raw, t))
    # and with finite, moderate f16 scales in every f16-sized field of the block
    sane = raw.reshape(300, t.type_size).copy()
    f16s = rng.uniform(-2, 2, (300, t.type_size // 2)).astype("<f2").view(np.uint8)
    scales_at = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q2_K": [80, 82], "Q3_K": [108],
                 "Q6_K": [208], "TQ1_0": [52], "TQ2_0": [64]}.get(t.name, [0])  # fmt: skip
    for at in scales_at:
        if t.name not in ("MXFP4", "NVFP4", "IQ1_M"):
            sane[:, at : at + 2] = f16s[:, at : at + 2]
    shape = (3, 100 * t.block_size)
    assert same_bits(dequantize(sane, t, shape).reshape(-1), oracle_dequant(sane, t))


@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.F64,
                               GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64])  # fmt: skip
def test_plain_types(t):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(64) * 100
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4",
              "I64": "<i8"}  # fmt: skip
    if t == GGMLType.BF16:
        raw = (values.astype("<f4").view("<u4") >> 16).astype("<u2")
        expect = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        raw = values.astype(dtypes[t.name])
        expect = raw.astype(np.float32)
    assert same_bits(dequantize(raw.view(np.uint8), t, (8, 8)), expect.reshape(8, 8))


def _scalar_reference(t: GGMLType, block: bytes) -> list[float]:
    """Per-element loops transcribed from ggml's dequantize_row_* for the types gguf lacks."""
    f16 = float(np.frombuffer(block[:2], "<f2")[0])
    if t == GGMLType.Q8_1:
        return [np.float32(f16) * np.float32(q) for q in np.frombuffer(block[4:], np.int8)]
    if t == GGMLType.Q8_K:
        d = np.frombuffer(block[:4], "<f4")[0]
        return [d * np.float32(q) for q in np.frombuffer(block[4:260], np.int8)]
    if t == GGMLType.Q1_0:
        return [np.float32(f16) * (1 if (block[2 + j // 8] >> (j % 8)) & 1 else -1)
                for j in range(128)]  # fmt: skip
    raise AssertionError(t)


@pytest.mark.parametrize("t", [GGMLType.Q8_1, GGMLType.Q8_K, GGMLType.Q1_0], ids=str)
def test_dequant_without_oracle(t):
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, (20, t.type_size), dtype=np.uint8)
    blocks[:, :2] = rng.uniform(-1, 1, (20, 1)).astype("<f2").view(np.uint8)
    if t == GGMLType.Q8_K:
        blocks[:, :4] = rng.uniform(-1, 1, (20, 1)).astype("<f4").view(np.uint8)
    expect = np.array([v for b in blocks for v in _scalar_reference(t, b.tobytes())], np.float32)
    assert same_bits(dequantize(blocks, t, (20 * t.block_size,)), expect)


def _test_rows() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((24, 512)) * rng.uniform(0.01, 10, (24, 1))).astype(np.float32)
    x[0] = 0  # all zero
    x[1] = 1.5  # constant
    x[2, ::2] = -x[2, 1::2]  # ties of magnitude with both signs
    x[3] = np.round(x[3] * 4) / 4  # many exact halves after scaling
    x[4, :32] = 1e-30  # tiny
    return x


@pytest.mark.parametrize("t", ORACLE_QUANT, ids=lambda t: t.name)
def test_quantize_bit_exact(t):
    x = _test_rows()
    expect = np.ascontiguousarray(gq.quantize(x, GGMLQuantizationType(t)))
    got = quantize(x, t)
    assert got.dtype == np.uint8
    assert np.array_equal(got, expect.view(np.uint8).reshape(got.shape))


def test_bf16_special_values():
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 3.0e38, 1e-40], np.float32)
    x = np.concatenate([x, np.frombuffer(np.array([0x7F800001, 0xFFC00001], "<u4"), "<f4")])
    expect = gq.quantize(x, GGMLQuantizationType.BF16)
    assert np.array_equal(quantize(x, GGMLType.BF16).reshape(-1), expect.view(np.uint8).reshape(-1))


@pytest.mark.parametrize("t", sorted(BOUNDS), ids=lambda t: t.name)
def test_quantize_error_bounds(t):
    # ggml's test-quantize-fns data: 0.1 + 2 cos(i + offset)
    x = (0.1 + 2 * np.cos(np.arange(4096, dtype=np.float32))).astype(np.float32)
    y = dequantize(quantize(x, t), t, x.shape)
    assert np.sqrt(np.sum((x.astype(np.float64) - y) ** 2)) / x.size < BOUNDS[t]
    g = np.random.default_rng(9).standard_normal((64, 1024)).astype(np.float32)
    nmse = np.sum((g - dequantize(quantize(g, t), t, g.shape)) ** 2) / np.sum(g**2)
    limits = {"Q2_K": 0.1, "Q3_K": 0.03, "Q4_K": 6e-3, "Q5_K": 1.6e-3, "Q6_K": 4e-4, "IQ4_NL": 8e-3}
    assert nmse < limits.get(t.name, 1e-4)


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K], ids=str)
def test_k_quantize_edge_rows(t):
    x = _test_rows()
    y = dequantize(quantize(x, t), t, x.shape)
    assert np.all(y[0] == 0)
    assert np.allclose(y[1], 1.5, rtol=2e-2)
    for i in range(2, len(x)):
        err = np.sum((x[i] - y[i]) ** 2) / max(np.sum(x[i] ** 2), 1e-30)
        assert err < 0.02, (i, err)


def test_quantizers_cover_the_required_types():
    required = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                "Q5_K", "Q6_K", "IQ4_NL"}  # fmt: skip
    assert required <= {t.name for t in QUANTIZERS}


def test_q8_1_sum_field():
    x = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
    b = quantize(x, GGMLType.Q8_1)
    d = b[:, :2].copy().view("<f2").astype(np.float32)
    s = b[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = b[:, 4:].view(np.int8).astype(np.int32)
    expect = (qs.sum(axis=1, keepdims=True).astype(np.float32) * d).astype("<f2").astype(np.float32)
    assert np.array_equal(s, expect)


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.F16, GGMLType.IQ2_XS],
                         ids=str)  # fmt: skip
def test_any_run_of_rows(t):
    rng = np.random.default_rng(4)
    shape = (10, 2 * t.block_size)
    raw = rng.integers(0, 256, (10, t.row_nbytes(shape[1])), dtype=np.uint8)
    raw[:, :2] = rng.uniform(-1, 1, (10, 1)).astype("<f2").view(np.uint8)
    full = dequantize(raw, t, shape)
    assert same_bits(dequantize(raw[5:9], t, (4, shape[1])), full[5:9])


def test_bad_arguments():
    with pytest.raises(ValueError, match="blocks"):
        dequantize(np.zeros(18, np.uint8), GGMLType.Q4_0, (16,))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(17, np.uint8), GGMLType.Q4_0, (32,))
    with pytest.raises(ValueError, match="not supported"):
        quantize(np.zeros(256, np.float32), GGMLType.IQ2_XXS)
    with pytest.raises(ValueError, match="blocks"):
        quantize(np.zeros(31, np.float32), GGMLType.Q8_0)
