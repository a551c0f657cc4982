"""Ternary and FP4 types: TQ1_0, TQ2_0 (BitNet-style ternary), MXFP4, NVFP4 (E2M1 values with
E8M0 / UE4M3 scales) and Q1_0 (one sign bit per weight). Dequantization only."""

from __future__ import annotations

import numpy as np

from llmrt.gguf.constants import QK_K, GGMLType
from llmrt.gguf.quants._common import F32, bits_le, f16, nibbles
from llmrt.gguf.quants.registry import dequantizer

# E2M1 values, doubled (ggml's kvalues_mxfp4); the scales below carry the matching factor 1/2.
FP4_LEVELS = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=F32)
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _trits(q: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """Base-3 digits packed as ceil(q * 3^n * 3 / 256): (n, k) bytes -> (n, len(powers) * k)."""
    scaled = q[:, None, :] * powers[None, :, None]  # uint8 product wraps mod 256 on purpose
    return ((scaled.astype(np.uint16) * 3) >> 8).reshape(q.shape[0], -1)


@dequantizer(GGMLType.TQ1_0)
def dequant_tq1_0(blocks: np.ndarray) -> np.ndarray:
    q = np.concatenate(
        [
            _trits(blocks[:, 0:32], _POW3),
            _trits(blocks[:, 32:48], _POW3),
            _trits(blocks[:, 48:52], _POW3[:4]),
        ],
        axis=-1,
    )
    return (q.astype(np.int16) - 1).astype(F32) * f16(blocks, 52)


@dequantizer(GGMLType.TQ2_0)
def dequant_tq2_0(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    q = blocks[:, 0:64].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    q = (q & 3).reshape(n, QK_K)
    return (q.astype(np.int16) - 1).astype(F32) * f16(blocks, 64)


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32, subnormal for e < 2."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32)
    return bits.view(F32)


@dequantizer(GGMLType.MXFP4)
def dequant_mxfp4(blocks: np.ndarray) -> np.ndarray:
    return FP4_LEVELS[nibbles(blocks[:, 1:17])] * _e8m0_half(blocks[:, 0:1])


def _ue4m3_half_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 for every byte: unsigned E4M3 (bias 7), times 1/2; 0 and 0x7F are 0."""
    x = np.arange(256)
    exp, man = (x >> 3) & 0xF, (x & 7).astype(np.float64)
    raw = np.where(exp == 0, man * 2.0**-9, (1 + man / 8) * 2.0 ** (exp - 7.0))
    return np.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(F32)  # all exact in float32


_UE4M3_HALF = _ue4m3_half_table()


@dequantizer(GGMLType.NVFP4)
def dequant_nvfp4(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d = _UE4M3_HALF[blocks[:, 0:4]].reshape(n, 4, 1)  # one scale per 16 elements
    q = nibbles(blocks[:, 4:36].reshape(n * 4, 8)).reshape(n, 4, 16)
    return (d * FP4_LEVELS[q]).reshape(n, 64)


@dequantizer(GGMLType.Q1_0)
def dequant_q1_0(blocks: np.ndarray) -> np.ndarray:
    d = f16(blocks, 0)
    return np.where(bits_le(blocks[:, 2:18]) != 0, d, -d)
