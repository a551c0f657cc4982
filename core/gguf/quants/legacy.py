"""Plain and integer types, and the 32-element legacy quants Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.

Layouts (ggml-common.h): d is an f16 scale, m an f16 minimum; a block of 32 keeps elements 0..15
in the low nibbles of qs and 16..31 in the high nibbles; Q5 keeps bit 4 of element j in bit j of
the little-endian u32 qh.
"""

from __future__ import annotations

import numpy as np

from llmrt.gguf.constants import GGMLType
from llmrt.gguf.quants._common import (
    F32,
    bits_le,
    f16,
    nibbles,
    round_away,
    safe_inverse,
    to_f16_bytes,
)
from llmrt.gguf.quants.registry import Dequantizer, dequantizer, quantizer

# -- plain types: one element per block -------------------------------------------------------


def _plain(dtype: str) -> Dequantizer:
    def dequant(blocks: np.ndarray) -> np.ndarray:
        return blocks.reshape(-1).view(dtype).astype(F32).reshape(-1, 1)

    return dequant


for _t, _dt in (
    (GGMLType.F32, "<f4"),
    (GGMLType.F16, "<f2"),
    (GGMLType.F64, "<f8"),
    (GGMLType.I8, "<i1"),
    (GGMLType.I16, "<i2"),
    (GGMLType.I32, "<i4"),
    (GGMLType.I64, "<i8"),
):
    dequantizer(_t)(_plain(_dt))


@dequantizer(GGMLType.BF16)
def dequant_bf16(blocks: np.ndarray) -> np.ndarray:
    return (blocks.reshape(-1).view("<u2").astype(np.uint32) << 16).view(F32).reshape(-1, 1)


@quantizer(GGMLType.F32)
def quant_f32(x: np.ndarray) -> np.ndarray:
    return x.astype("<f4").view(np.uint8).reshape(-1, 4)


@quantizer(GGMLType.F16)
def quant_f16(x: np.ndarray) -> np.ndarray:
    # numpy's float16 cast rounds to nearest even, like F16C and ggml_compute_fp32_to_fp16.
    return x.astype("<f2").view(np.uint8).reshape(-1, 2)


@quantizer(GGMLType.BF16)
def quant_bf16(x: np.ndarray) -> np.ndarray:
    # ggml_compute_fp32_to_bf16: NaNs become quiet NaNs; everything else rounds to nearest even.
    u = x.reshape(-1).view("<u4").astype(np.uint64)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    quiet_nan = (u >> 16) | 64
    out = np.where((u & 0x7FFFFFFF) > 0x7F800000, quiet_nan, rounded).astype("<u2")
    return out.view(np.uint8).reshape(-1, 2)


# -- Q4_0, Q4_1 ------------------------------------------------------------------------------


@dequantizer(GGMLType.Q4_0)
def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = f16(blocks, 0)
    q = nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
    return q.astype(F32) * d


@dequantizer(GGMLType.Q4_1)
def dequant_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m = f16(blocks, 0), f16(blocks, 2)
    return nibbles(blocks[:, 4:20]).astype(F32) * d + m


def _abs_max_signed(x: np.ndarray) -> np.ndarray:
    """The element of largest magnitude of each row, keeping its sign (first one on ties)."""
    i = np.abs(x).argmax(axis=-1)[:, None]
    return np.take_along_axis(x, i, axis=-1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    half = q.shape[-1] // 2
    return (q[:, :half] & 0x0F) | (q[:, half:] << 4)


@quantizer(GGMLType.Q4_0)
def quant_q4_0(x: np.ndarray) -> np.ndarray:
    d = _abs_max_signed(x) / F32(-8)
    q = np.minimum(np.trunc(x * safe_inverse(d) + F32(8.5)), F32(15)).astype(np.uint8)
    return np.concatenate([to_f16_bytes(d), _pack_nibbles(q)], axis=-1)


@quantizer(GGMLType.Q4_1)
def quant_q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / F32(15)
    q = np.minimum(np.trunc((x - lo) * safe_inverse(d) + F32(0.5)), F32(15)).astype(np.uint8)
    return np.concatenate([to_f16_bytes(d), to_f16_bytes(lo), _pack_nibbles(q)], axis=-1)


# -- Q5_0, Q5_1 ------------------------------------------------------------------------------


def _q5(blocks: np.ndarray, qh_at: int) -> np.ndarray:
    high = bits_le(blocks[:, qh_at : qh_at + 4]) << 4
    return nibbles(blocks[:, qh_at + 4 : qh_at + 20]) | high


@dequantizer(GGMLType.Q5_0)
def dequant_q5_0(blocks: np.ndarray) -> np.ndarray:
    q = _q5(blocks, 2).astype(np.int8) - np.int8(16)
    return q.astype(F32) * f16(blocks, 0)


@dequantizer(GGMLType.Q5_1)
def dequant_q5_1(blocks: np.ndarray) -> np.ndarray:
    return _q5(blocks, 4).astype(F32) * f16(blocks, 0) + f16(blocks, 2)


def _pack_q5(q: np.ndarray) -> np.ndarray:
    qh = np.packbits(q >> 4, axis=-1, bitorder="little")
    return np.concatenate([qh, _pack_nibbles(q)], axis=-1)


@quantizer(GGMLType.Q5_0)
def quant_q5_0(x: np.ndarray) -> np.ndarray:
    d = _abs_max_signed(x) / F32(-16)
    q = np.minimum(np.trunc(x * safe_inverse(d) + F32(16.5)), F32(31)).astype(np.uint8)
    return np.concatenate([to_f16_bytes(d), _pack_q5(q)], axis=-1)


@quantizer(GGMLType.Q5_1)
def quant_q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / F32(31)
    q = np.minimum(np.trunc((x - lo) * safe_inverse(d) + F32(0.5)), F32(31)).astype(np.uint8)
    return np.concatenate([to_f16_bytes(d), to_f16_bytes(lo), _pack_q5(q)], axis=-1)


# -- Q8_0, Q8_1 ------------------------------------------------------------------------------


@dequantizer(GGMLType.Q8_0)
def dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    return blocks[:, 2:].view(np.int8).astype(F32) * f16(blocks, 0)


@dequantizer(GGMLType.Q8_1)
def dequant_q8_1(blocks: np.ndarray) -> np.ndarray:
    return blocks[:, 4:].view(np.int8).astype(F32) * f16(blocks, 0)


def _q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.abs(x).max(axis=-1, keepdims=True) / F32(127)
    return d, round_away(x * safe_inverse(d))


@quantizer(GGMLType.Q8_0)
def quant_q8_0(x: np.ndarray) -> np.ndarray:
    d, q = _q8(x)
    return np.concatenate([to_f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=-1)


@quantizer(GGMLType.Q8_1)
def quant_q8_1(x: np.ndarray) -> np.ndarray:
    d, q = _q8(x)
    s = q.astype(np.int32).sum(axis=-1, keepdims=True).astype(F32) * d  # s = d * sum(qs)
    parts = [to_f16_bytes(d), to_f16_bytes(s), q.astype(np.int8).view(np.uint8)]
    return np.concatenate(parts, axis=-1)
