"""Quantized matrix products on the GGUF blocks as stored, the way ggml's CPU backend computes them.

A weight of a quantized type is multiplied with activations quantized to 8 bits in blocks (ggml's
"vec_dot type"): q8_0 for Q4_0, Q5_0, Q8_0 and IQ4_NL, q8_1 (q8_0 plus the block's sum) for Q4_1
and Q5_1, q8_K (256-element blocks with sums of 16) for the K-quants. Products of the levels are
summed exactly in int32 (a block's, or a lane's share of a block, as ggml's SIMD code splits it);
only the scales are floats. Activations round exactly as `llmrt.reference` rounds them
(`_round_q8_0`, `_round_q8_k`), so the only difference from the reference is the order of float
additions (and, for Q4_1 / Q5_1, ggml's f16 rounding of q8_1's block sum).

Layout of an activation batch x [T, K] once quantized: `xq` int8 [T, K] (the levels), `xd` f32
[T, K / block] (the scales), and per type family `xs` f32 [T, K / 32] (q8_1's f16 d·Σq) or
`xsum` int32 [T, K / 16] (q8_K's sums of 16 levels).

A product runs over weight rows in chunks, one chunk per prange iteration; a prompt's product
unpacks each weight row once for the whole batch (see "products" below).
"""

from __future__ import annotations

import mmap
import weakref
from typing import Any

import numba
import numpy as np
from numba import prange
from numba.extending import overload

from llmrt.gguf.constants import GGMLType
from llmrt_cpu.jit import inline, jit, pjit, stack_array
from llmrt_cpu.simd import (
    X8_AVX2,
    X8_K_BYTES,
    X8_Q4,
    X8_Q4_K,
    X8_Q4_MIN,
    X8_Q6_K,
    X8_Q8,
    X8_TOKENS,
    X8_VARIANT,
    X8_VNNI,
    block_x8,
    block_x8_k,
    bytes_at,
    dot_i8,
    dot_q4,
    dot_q5,
    dot_q6,
    dot_u4,
    mac_pairs,
)  # fmt: skip

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (int(t) for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                                                 GGMLType.Q5_1, GGMLType.Q8_0))  # fmt: skip
IQ4_NL = int(GGMLType.IQ4_NL)
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (int(t) for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K,
                                                 GGMLType.Q5_K, GGMLType.Q6_K))  # fmt: skip

# Weight types by the activation blocks they are multiplied with.
Q8_0_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.IQ4_NL})
Q8_1_TYPES = frozenset({GGMLType.Q4_1, GGMLType.Q5_1})
Q8_K_TYPES = frozenset({GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})
FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})
SUPPORTED_TYPES = Q8_0_TYPES | Q8_1_TYPES | Q8_K_TYPES | FLOAT_TYPES

# ggml's kvalues_iq4nl (the same table as llmrt.gguf.quants.iquants.IQ4_LEVELS).
IQ4_NL_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)

# Every f16 bit pattern's value: the kernels read f16 tensors (KV caches, F16 weights) as uint16
# and convert through this table, since numba has no float16 on the CPU.
with np.errstate(invalid="ignore"):  # the signalling NaNs raise "invalid" on ARM's conversion
    F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)

# Rows of a weight per prange iteration: enough iterations to balance threads, few enough that
# each one's scratch allocation is negligible.
_CHUNKS = 64
_F32 = np.float32

# ---- scalar conversions -------------------------------------------------------------------------


@jit
def f16_bits_to_f32(bits: int) -> float:
    """An f16 (its 16 bits) as float32: normal numbers by rebiasing the exponent.

    Bit arithmetic here is in int64 (numba widens small integers anyway; mixing unsigned and
    signed 64-bit would give floats), narrowed to uint32 only to reinterpret the bits."""
    h = np.int64(bits)
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:  # zero or subnormal: mantissa · 2^-24, exact in float32
        value = _F32(mantissa) * _F32(5.9604644775390625e-08)
        return -value if sign else value
    if exponent == 31:  # inf or nan
        return np.uint32(sign | 0x7F800000 | (mantissa << 13)).view(np.float32)
    return np.uint32(sign | ((exponent + 112) << 23) | (mantissa << 13)).view(np.float32)


@jit
def f32_to_f16_bits(x: float) -> int:
    """float32 -> f16 bits, rounding to nearest even as F16C, numpy and ggml do."""
    bits = np.int64(np.float32(x).view(np.uint32))
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    if magnitude >= 0x7F800000:  # inf stays inf, nan stays a (quiet) nan
        return sign | 0x7C00 | (0x200 if magnitude > 0x7F800000 else 0)
    if magnitude >= 0x477FF000:  # at or past the midpoint above 65504: inf
        return sign | 0x7C00
    if magnitude < 0x38800000:  # below 2^-14: an f16 subnormal, counted in 2^-24
        scaled = np.uint32(magnitude).view(np.float32) * _F32(16777216.0)  # exact: power of two
        return sign | np.int64(np.rint(scaled))
    # Rebias the exponent (127 -> 15) and drop 13 mantissa bits, rounding half to even; a carry
    # out of the mantissa correctly bumps the exponent.
    half = (magnitude - 0x38000000) >> 13
    rest = magnitude & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and (half & 1)):
        half += 1
    return sign | half


@jit
def round_f16(x: float) -> float:
    """x rounded to the nearest f16, as float32 (numpy's x.astype(float16).astype(float32))."""
    return f16_bits_to_f32(f32_to_f16_bits(x))


@jit
def round_bf16(x: float) -> float:
    """x rounded to bf16 as reference._round_bf16 (nearest even; no nan special case)."""
    bits = np.int64(np.float32(x).view(np.uint32))
    return np.uint32((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)


@jit
def bf16_bits_to_f32(bits: int) -> float:
    return np.uint32(np.int64(bits) << 16).view(np.float32)


# ---- activations to q8 blocks -------------------------------------------------------------------


@inline
def _quantize_q8_0(
    x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray
) -> None:
    """Rows of x [T, K] to q8_0 blocks of 32: levels rint(x · 127/amax), scale f16(amax/127).

    xs receives q8_1's block sum, f16(amax/127 · Σ levels) with the unrounded scale, as ggml's
    quantize_row_q8_1 stores it (pass a [T, 0] array where only q8_0 is wanted)."""
    t_count, k = x.shape
    with_sums = xs.shape[1] > 0
    for t in prange(t_count):
        for b in range(k // 32):
            base = b * 32
            amax = _F32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[t, base + j]))
            inv = _F32(127.0) / amax if amax > 0 else _F32(0.0)
            total = 0
            for j in range(32):
                level = np.int32(np.rint(x[t, base + j] * inv))
                xq[t, base + j] = level
                total += level
            d = amax / _F32(127.0)
            xd[t, b] = round_f16(d)
            xsum[t, b] = total
            if with_sums:
                xs[t, b] = round_f16(d * _F32(total))


@inline
def _quantize_q8_k(x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xsum: np.ndarray) -> None:
    """Rows of x [T, K] to q8_K blocks of 256: the element of largest magnitude (the first such)
    maps to -127 exactly; scale 1/iscale in f32; xsum holds the sums of each 16 levels."""
    t_count, k = x.shape
    for t in prange(t_count):
        for b in range(k // 256):
            base = b * 256
            amax = _F32(0.0)  # then the first element of that magnitude: two loops that vectorize
            for j in range(256):
                amax = max(amax, abs(x[t, base + j]))
            peak = x[t, base]
            for j in range(256):
                if abs(x[t, base + j]) == amax:
                    peak = x[t, base + j]
                    break
            iscale = _F32(-127.0) / peak if peak != 0 else _F32(0.0)
            for g in range(16):
                total = 0
                for j in range(16):
                    level = np.int32(min(np.rint(x[t, base + g * 16 + j] * iscale), _F32(127.0)))
                    xq[t, base + g * 16 + j] = level
                    total += level
                xsum[t, b * 16 + g] = total
            xd[t, b] = _F32(1.0) / iscale if iscale != 0 else _F32(0.0)


# Each quantizer twice: split over the threads for batches, on the calling thread for a few rows
# (a decode step's), where a parallel region costs more than the work. (Separate functions, not
# two dispatchers of one: numba's cache would give both the same entry.)
SERIAL_ELEMENTS = 1 << 14


@pjit
def quantize_q8_0(
    x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray
) -> None:
    _quantize_q8_0(x, xq, xd, xs, xsum)


@jit
def quantize_q8_0_serial(
    x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray
) -> None:
    _quantize_q8_0(x, xq, xd, xs, xsum)


@pjit
def quantize_q8_k(x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xsum: np.ndarray) -> None:
    _quantize_q8_k(x, xq, xd, xsum)


@jit
def quantize_q8_k_serial(x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xsum: np.ndarray) -> None:
    _quantize_q8_k(x, xq, xd, xsum)


def quantize_activations(x: np.ndarray, weight_type: GGMLType) -> tuple[np.ndarray, ...]:
    """x [T, K] f32 to the q8 blocks a weight of `weight_type` is multiplied with:
    (xq, xd, xs, xsum) for the 32-element families (xsum: each block's sum of levels, exact),
    (xq, xd, xsum) for the K-quants."""
    t, k = x.shape
    xq = np.empty((t, k), dtype=np.int8)
    if weight_type in Q8_K_TYPES:
        xd = np.empty((t, k // 256), dtype=np.float32)
        xsum = np.empty((t, k // 16), dtype=np.int32)
        (quantize_q8_k_serial if x.size <= SERIAL_ELEMENTS else quantize_q8_k)(x, xq, xd, xsum)
        return xq, xd, xsum
    xd = np.empty((t, k // 32), dtype=np.float32)
    xs = np.empty((t, k // 32 if weight_type in Q8_1_TYPES else 0), dtype=np.float32)
    xsum = np.empty((t, k // 32), dtype=np.int32)
    (quantize_q8_0_serial if x.size <= SERIAL_ELEMENTS else quantize_q8_0)(x, xq, xd, xs, xsum)
    return xq, xd, xs, xsum


# ---- weight blocks to levels --------------------------------------------------------------------
#
# Each unpacker reads block b of one weight row (a 1-D uint8 view) into int32 levels on the stack
# and returns the block's float factors. They are inlined into the kernels (numba IR inlining):
# called as functions, numba would pass the stack arrays through memory and LLVM would not
# vectorize the lanes.


_TWO_POW_112 = _F32(2.0**112)


@inline
def _f16_at(row: np.ndarray, at: int) -> float:
    """The little-endian f16 at byte `at` of a row, through the table (a plain load).

    Measured on the Q4_1 product (SmolLM2's attn_q, one thread): table 21.5 us; the bit-by-bit
    conversion's branches 38; branch-free bit arithmetic 42; the hardware conversion (F16C) 22
    fresh but 50 once loaded from numba's cache, whose build put `vpinsrw` on the accumulator's
    register, a false dependency that serialized the blocks."""
    return F16_TO_F32[np.int64(row[at]) | (np.int64(row[at + 1]) << 8)]


@inline
def unpack_block_32(row: np.ndarray, b: int, kind: int, w: np.ndarray) -> tuple[float, float]:
    """Block b of a 32-element block type to its levels w[0:32]; returns (d, m) such that
    element = d·level + m (m = 0 for the symmetric types)."""
    if kind in (Q4_0, IQ4_NL):  # d qs[16]: elements 0..15 low nibbles, 16..31 high
        at = b * 18
        for j in range(16):
            byte = np.int32(row[at + 2 + j])
            if kind == Q4_0:
                w[j] = (byte & 15) - 8
                w[j + 16] = (byte >> 4) - 8
            else:
                w[j] = IQ4_NL_LEVELS[byte & 15]
                w[j + 16] = IQ4_NL_LEVELS[byte >> 4]
        return _f16_at(row, at), _F32(0.0)
    if kind == Q4_1:  # d m qs[16]
        at = b * 20
        for j in range(16):
            byte = np.int32(row[at + 4 + j])
            w[j] = byte & 15
            w[j + 16] = byte >> 4
        return _f16_at(row, at), _f16_at(row, at + 2)
    if kind in (Q5_0, Q5_1):  # d (m) qh qs[16]: bit 4 of element j is bit j of qh
        size, qh_at, offset = (22, 2, 16) if kind == Q5_0 else (24, 4, 0)
        at = b * size
        for j in range(16):
            byte = np.int32(row[at + qh_at + 4 + j])
            w[j] = (byte & 15) - offset
            w[j + 16] = (byte >> 4) - offset
        for i in range(4):  # bit j of qh (little-endian) is bit j % 8 of its byte j // 8
            bits = np.int32(row[at + qh_at + i])
            for lane in range(8):
                w[i * 8 + lane] += ((bits >> lane) & 1) << 4
        minimum = _F32(0.0) if kind == Q5_0 else _f16_at(row, at + 2)
        return _f16_at(row, at), minimum
    if kind == Q8_0:  # d qs int8[32]
        at = b * 34
        for j in range(32):
            w[j] = (np.int32(row[at + 2 + j]) ^ 0x80) - 0x80
        return _f16_at(row, at), _F32(0.0)
    return _F32(0.0), _F32(0.0)


@inline
def _scale_min_k4(row: np.ndarray, at: int, j: int) -> tuple[int, int]:
    """Sub-block j's 6-bit scale and min from the 12 packed bytes at `at` (get_scale_min_k4)."""
    if j < 4:
        return np.int32(row[at + j]) & 63, np.int32(row[at + j + 4]) & 63
    scale = (np.int32(row[at + j + 4]) & 15) | ((np.int32(row[at + j - 4]) >> 6) << 4)
    minimum = (np.int32(row[at + j + 4]) >> 4) | ((np.int32(row[at + j]) >> 6) << 4)
    return scale, minimum


@inline
def unpack_block_k(
    row: np.ndarray, b: int, kind: int, w: np.ndarray, sc: np.ndarray, mn: np.ndarray
) -> tuple[float, float]:
    """Super-block b of a K-quant to levels w[0:256], an integer scale and min per 16 elements
    (sc, mn [16]); returns (d, dmin) such that element = d·sc·level - dmin·mn."""
    if kind == Q2_K:  # scales[16] qs[64] d dmin; levels 0..3, 4-bit scale and min per 16
        at = b * 84
        for g in range(16):
            sc[g] = np.int32(row[at + g]) & 15
            mn[g] = np.int32(row[at + g]) >> 4
        for half in range(2):
            for shift in range(4):
                for lane in range(32):
                    byte = np.int32(row[at + 16 + half * 32 + lane])
                    w[half * 128 + shift * 32 + lane] = (byte >> (2 * shift)) & 3
        return _f16_at(row, at + 80), _f16_at(row, at + 82)
    if kind == Q3_K:  # hmask[32] qs[64] scales[12] d; levels -4..3, 6-bit scales - 32
        at = b * 110
        for g in range(16):
            packed = np.int32(row[at + 96 + (g % 8)])
            low = (packed & 15) if g < 8 else (packed >> 4)
            high = (np.int32(row[at + 104 + (g % 4)]) >> (2 * (g // 4))) & 3
            sc[g] = (low | (high << 4)) - 32
            mn[g] = 0
        for half in range(2):
            for shift in range(4):
                for lane in range(32):
                    low = (np.int32(row[at + 32 + half * 32 + lane]) >> (2 * shift)) & 3
                    # a clear bit in hmask subtracts 4
                    clear = 1 - ((np.int32(row[at + lane]) >> (4 * half + shift)) & 1)
                    w[half * 128 + shift * 32 + lane] = low - 4 * clear
        return _f16_at(row, at + 108), _F32(0.0)
    if kind in (Q4_K, Q5_K):  # d dmin scales[12] (qh[32]) qs[128]
        at = b * (144 if kind == Q4_K else 176)
        qs_at = at + (16 if kind == Q4_K else 48)
        for sub in range(8):
            scale, minimum = _scale_min_k4(row, at + 4, sub)
            sc[2 * sub] = scale
            sc[2 * sub + 1] = scale
            mn[2 * sub] = minimum
            mn[2 * sub + 1] = minimum
        # sub-block 2c holds chunk c's low nibbles, 2c + 1 its high nibbles
        for chunk in range(4):
            for lane in range(32):
                byte = np.int32(row[qs_at + chunk * 32 + lane])
                w[chunk * 64 + lane] = byte & 15
                w[chunk * 64 + 32 + lane] = byte >> 4
        if kind == Q5_K:  # bit 4 of sub-block s, element l, is bit s of qh[l]
            for sub in range(8):
                for lane in range(32):
                    w[sub * 32 + lane] += ((np.int32(row[at + 16 + lane]) >> sub) & 1) << 4
        return _f16_at(row, at), _f16_at(row, at + 2)
    if kind == Q6_K:  # ql[128] qh[64] scales int8[16] d; levels -32..31
        at = b * 210
        for g in range(16):
            sc[g] = (np.int32(row[at + 192 + g]) ^ 0x80) - 0x80
            mn[g] = 0
        for half in range(2):
            for quarter in range(4):  # low nibbles of ql's two 32-byte runs, then high nibbles
                low_at = at + half * 64 + (quarter % 2) * 32
                low_shift = 4 * (quarter // 2)
                for lane in range(32):
                    low = (np.int32(row[low_at + lane]) >> low_shift) & 15
                    high = (np.int32(row[at + 128 + half * 32 + lane]) >> (2 * quarter)) & 3
                    w[half * 128 + quarter * 32 + lane] = (low | (high << 4)) - 32
        return _f16_at(row, at + 208), _F32(0.0)
    return _F32(0.0), _F32(0.0)


# ---- products -----------------------------------------------------------------------------------
#
# Two shapes of the same sums, both with each block's integer sum exact and the float products
# added block after block, in the same order, as ggml's scalar code does. Up to ROW_TOKENS
# activation rows (decoding, small batches), a weight row's blocks are unpacked and dotted with
# one activation row at a time; a row's result does not depend on the other rows of the batch (a
# sequence decodes the same alone or beside others), like the reference's row-by-row products.
# Larger batches (prompts) go 16 activation rows at a time through an outer product: each block's
# integer sums for 16 rows at once, vectorized across the rows, so no horizontal reductions.
#
# (Per-lane float sums, as ggml's AVX2 code keeps them, decoded 1.5-2x faster here; with them a
# Gemma 3 greedy case left llama.cpp's tokens at a top-2 gap of 0.41, past the test's 0.35.)

ROW_TOKENS = 32  # as reference.ROW_BY_ROW
_TILE = 16  # activation rows per tile of the prompt kernels, and lanes per token of the row ones
_levels_32 = stack_array(32, np.int32)
_levels_256 = stack_array(256, np.int32)
_levels_i8_32 = stack_array(32, np.int8)
_levels_i8_256 = stack_array(256, np.int8)
_group_ints = stack_array(16, np.int32)
_tile_ints = stack_array(_TILE, np.int32)
_tile_ints_b = stack_array(_TILE, np.int32)
_ROWS = 4  # weight rows the prompt kernels multiply at once
_rows_tile_ints = stack_array(_ROWS * _TILE, np.int32)
_rows_tile_floats = stack_array(_ROWS * _TILE, np.float32)


@inline
def _block_dot_32(
    row: np.ndarray, b: int, kind: int, x: np.ndarray, x_sums: np.ndarray, base: int,
    w: np.ndarray, wp: Any,
) -> tuple[int, float, float]:  # fmt: skip
    """Block b of a 32-element type times x[base:base + 32] (int8, its level sums x_sums):
    (Σ level·x exactly, d, m). The common types unpack in registers (llmrt_cpu.simd); Q4_0's and
    Q5_0's levels are taken unsigned, less 8 (16) times the block's Σx, which lets x86 multiply
    unsigned by signed bytes in one instruction (1.47x on Q4_0); IQ4_NL's table goes through `w`
    (32 int8 on the stack, `wp` its pointer)."""
    if kind == Q8_0:
        at = b * 34
        return dot_i8(row, at + 2, x, base, 32), _f16_at(row, at), _F32(0.0)
    if kind in (Q4_0, Q4_1):
        at, offset = (b * 18, 8) if kind == Q4_0 else (b * 20, 0)
        qs = at + (2 if kind == Q4_0 else 4)
        isum = dot_q4(row, qs, 0, x, base) - offset * x_sums[b]
        minimum = _F32(0.0) if kind == Q4_0 else _f16_at(row, at + 2)
        return isum, _f16_at(row, at), minimum
    if kind in (Q5_0, Q5_1):  # d (m) qh qs
        size, qh_at, offset = (22, 2, 16) if kind == Q5_0 else (24, 4, 0)
        at = b * size
        isum = dot_q5(row, at + qh_at + 4, at + qh_at, 0, x, base) - offset * x_sums[b]
        minimum = _F32(0.0) if kind == Q5_0 else _f16_at(row, at + 2)
        return isum, _f16_at(row, at), minimum
    d, minimum = unpack_block_32(row, b, kind, w)
    return dot_i8(wp, 0, x, base, 32), d, minimum


@inline
def _weight_row(addresses: np.ndarray, rows: np.ndarray, row_bytes: int, g: int) -> np.ndarray:
    """Row g of the weights in a row table, counted across them in order (see `RowTable`)."""
    wi = 0
    while g >= rows[wi]:
        g -= rows[wi]
        wi += 1
    return numba.carray(bytes_at(addresses[wi] + g * row_bytes), row_bytes)


@inline
def _matmul_q32_rows(
    addresses: np.ndarray, rows: np.ndarray, row_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """out[t, g] = weight row g · activation row t, for up to ROW_TOKENS rows of q8_0 / q8_1
    blocks and the rows g of one or more weights (a row table): Σ_b (d_w·d_x·isum_b
    (+ m_w·s_x)), isum_b the block's exact integer sum."""
    total = out.shape[1]
    t_count, k = xq.shape
    nb = k // 32
    with_min = xs.shape[1] > 0
    chunks = min(total, _CHUNKS)
    for c in prange(chunks):
        wp = _levels_i8_32()
        w = numba.carray(wp, 32)
        for g in range(c * total // chunks, (c + 1) * total // chunks):
            row = _weight_row(addresses, rows, row_bytes, g)
            for t in range(t_count):
                x, x_scales = xq[t], xd[t]
                acc = _F32(0.0)
                for b in range(nb):
                    isum, d, minimum = _block_dot_32(row, b, kind, x, xsum[t], b * 32, w, wp)
                    acc += (d * x_scales[b]) * _F32(isum)
                    if with_min:
                        acc += minimum * xs[t, b]
                out[t, g] = acc


@inline
def _block_dot_k(
    row: np.ndarray, b: int, kind: int, x: np.ndarray, x_sums: np.ndarray, w: np.ndarray,
    wp: Any, sc: np.ndarray, mn: np.ndarray,
) -> tuple[int, int, float, float]:  # fmt: skip
    """Super-block b of a K-quant times x[256·b:256·(b + 1)] (int8, with its sums of 16 in
    x_sums): (Σ_g sc_g·Σ level·x, Σ_g mn_g·Σ x, d, dmin), the sums exact. Q4_K and Q6_K unpack in
    registers; the other types through `w` (256 int8 on the stack, `wp` its pointer)."""
    base = b * 256
    isum = np.int32(0)
    min_sum = np.int32(0)
    if kind == Q4_K:
        at = b * 144
        for sub in range(8):  # 32 elements each: a 32-byte run's low, then high, nibbles
            scale, minimum = _scale_min_k4(row, at + 4, sub)
            run = at + 16 + (sub // 2) * 32
            dot = dot_u4(row, run, 4 * (sub % 2), 0, x, base + sub * 32, 32)
            isum = np.int32(isum + scale * dot)
            sums = x_sums[b * 16 + 2 * sub] + x_sums[b * 16 + 2 * sub + 1]
            min_sum = np.int32(min_sum + minimum * sums)
        return isum, min_sum, _f16_at(row, at), _f16_at(row, at + 2)
    if kind == Q6_K:
        at = b * 210
        for g in range(16):  # 16 elements each; see unpack_block_k for the layout
            half, quarter, part = g // 8, (g // 2) % 4, g % 2
            low_at = at + half * 64 + (quarter % 2) * 32 + part * 16
            high_at = at + 128 + half * 32 + part * 16
            low_shift, high_shift = 4 * (quarter // 2), 2 * quarter
            dot = dot_q6(row, low_at, low_shift, high_at, high_shift, x, base + g * 16, 16)
            isum = np.int32(isum + ((np.int32(row[at + 192 + g]) ^ 0x80) - 0x80) * dot)
        return isum, min_sum, _f16_at(row, at + 208), _F32(0.0)
    d, dmin = unpack_block_k(row, b, kind, w, sc, mn)
    for g in range(16):
        isum = np.int32(isum + sc[g] * dot_i8(wp, g * 16, x, base + g * 16, 16))
        min_sum = np.int32(min_sum + mn[g] * x_sums[b * 16 + g])
    return isum, min_sum, d, dmin


@inline
def _matmul_qk_rows(
    addresses: np.ndarray, rows: np.ndarray, row_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """out[t, g] = weight row g · activation row t, for up to ROW_TOKENS rows of q8_K blocks and
    the rows of a row table: Σ_b d_x·(d_w·Σ_g sc_g·isum_g - dmin_w·Σ_g mn_g·Σ(activation levels
    of g)), in integers up to the two products with the super-block's factors."""
    total = out.shape[1]
    t_count, k = xq.shape
    nb = k // 256
    chunks = min(total, _CHUNKS)
    for c in prange(chunks):
        wp = _levels_i8_256()
        w = numba.carray(wp, 256)
        sc = numba.carray(_group_ints(), 16)
        mn = numba.carray(_tile_ints(), 16)
        for g in range(c * total // chunks, (c + 1) * total // chunks):
            row = _weight_row(addresses, rows, row_bytes, g)
            for t in range(t_count):
                x, x_sums = xq[t], xsum[t]
                acc = _F32(0.0)
                for b in range(nb):
                    isum, min_sum, d, dmin = _block_dot_k(row, b, kind, x, x_sums, w, wp, sc, mn)
                    acc += (d * xd[t, b]) * _F32(isum) - (dmin * xd[t, b]) * _F32(min_sum)
                out[t, g] = acc


def _pair_tiles(xq: np.ndarray) -> np.ndarray:
    """int8 levels [T, K] -> int16 [ceil(T / 16) · K / 2 · 16 · 2], flat: for each tile of 16
    rows and each pair of elements (j, j + 1), the 16 rows' pairs side by side, as `mac_pairs`
    reads them."""
    t, k = xq.shape
    n_tiles = -(-t // _TILE)
    padded = np.zeros((n_tiles * _TILE, k), dtype=np.int16)
    padded[:t] = xq
    pairs = padded.reshape(n_tiles, _TILE, k // 2, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(pairs).reshape(-1)


def _tiles(a: np.ndarray) -> np.ndarray:
    """[T, N] -> [ceil(T / 16), N, 16]: activation rows side by side, zero-padded, so that the
    prompt kernels read 16 rows' values of one element as one contiguous vector."""
    t, n = a.shape
    n_tiles = -(-t // _TILE)
    padded = np.zeros((n_tiles * _TILE, n), dtype=a.dtype)
    padded[:t] = a
    return np.ascontiguousarray(padded.reshape(n_tiles, _TILE, n).transpose(0, 2, 1))


@inline
def _unpack_rows_32(
    raw: np.ndarray, r0: int, kind: int, w: np.ndarray, levels: np.ndarray, scales: np.ndarray,
    minimums: np.ndarray,
) -> int:  # fmt: skip
    """Weight rows r0.. r0 + _ROWS (those that exist) to int16 levels [_ROWS · K] and their
    blocks' factors [_ROWS · K / 32]; rows past the weight's end are zeros. Returns the count
    that exists."""
    m = raw.shape[0]
    nb = scales.shape[0] // _ROWS
    k = nb * 32
    count = min(_ROWS, m - r0)
    for q in range(_ROWS):
        for b in range(nb):
            if q < count:
                scales[q * nb + b], minimums[q * nb + b] = unpack_block_32(raw[r0 + q], b, kind, w)
            else:
                scales[q * nb + b], minimums[q * nb + b] = 0.0, 0.0
                for j in range(32):
                    w[j] = 0
            for j in range(32):
                levels[q * k + b * 32 + j] = w[j]
    return count


@inline
def _matmul_q32_tiles(
    raw: np.ndarray, kind: int, xt: np.ndarray, xdt: np.ndarray, xst: np.ndarray, out: np.ndarray
) -> None:
    """The q8_0 / q8_1 product for many activation rows, given as tiles (levels by
    `_pair_tiles`, scales and sums by `_tiles`): weight rows are unpacked _ROWS at a time, then
    each block's exact integer sums are taken for 16 activation rows and _ROWS weight rows at
    once (`mac_pairs`) and scaled: out = Σ_b d_w·d_x·isum (+ Σ_b m_w·s_x)."""
    m = raw.shape[0]
    t_count = out.shape[0]
    n_tiles, nb, _ = xdt.shape
    k = nb * 32
    with_min = xst.shape[1] > 0
    groups = -(-m // _ROWS)
    chunks = min(groups, _CHUNKS)
    for c in prange(chunks):
        w = numba.carray(_levels_32(), 32)
        isum_at = _rows_tile_ints()
        isum = numba.carray(isum_at, _ROWS * _TILE)
        acc = numba.carray(_rows_tile_floats(), _ROWS * _TILE)
        levels = np.empty(_ROWS * k, dtype=np.int16)
        scales = np.empty(_ROWS * nb, dtype=np.float32)
        minimums = np.empty(_ROWS * nb, dtype=np.float32)
        for group in range(c * groups // chunks, (c + 1) * groups // chunks):
            r0 = group * _ROWS
            count = _unpack_rows_32(raw, r0, kind, w, levels, scales, minimums)
            for tile in range(n_tiles):
                for i in range(_ROWS * _TILE):
                    acc[i] = 0.0
                tile_at = tile * k * _TILE
                for b in range(nb):
                    for i in range(_ROWS * _TILE):
                        isum[i] = 0
                    mac_pairs(isum_at, levels, b * 32, k, xt, tile_at + b * 32 * _TILE, 16)
                    for q in range(_ROWS):
                        scale = scales[q * nb + b]
                        for i in range(_TILE):
                            acc[q * _TILE + i] += (scale * xdt[tile, b, i]) * _F32(
                                isum[q * _TILE + i]
                            )
                        if with_min:
                            minimum = minimums[q * nb + b]
                            for i in range(_TILE):
                                acc[q * _TILE + i] += minimum * xst[tile, b, i]
                for q in range(count):
                    for i in range(min(_TILE, t_count - tile * _TILE)):
                        out[tile * _TILE + i, r0 + q] = acc[q * _TILE + i]


@inline
def _matmul_qk_tiles(
    raw: np.ndarray, kind: int, xt: np.ndarray, xdt: np.ndarray, xsumt: np.ndarray, out: np.ndarray
) -> None:
    """The q8_K product for many activation rows, given as tiles (as for `_matmul_q32_tiles`):
    per super-block the exact integer Σ_g sc_g·isum_g (the levels pre-multiplied by their
    group's scale) and Σ_g mn_g·xsum_g for 16 activation rows and _ROWS weight rows at a time,
    then d_x·(d_w·Σ - dmin_w·Σ)."""
    m = raw.shape[0]
    t_count = out.shape[0]
    n_tiles, nb, _ = xdt.shape
    k = nb * 256
    groups = -(-m // _ROWS)
    chunks = min(groups, _CHUNKS)
    for c in prange(chunks):
        w = numba.carray(_levels_256(), 256)
        sc = numba.carray(_group_ints(), 16)
        mn = numba.carray(_tile_ints_b(), 16)
        isum_at = _rows_tile_ints()
        isum = numba.carray(isum_at, _ROWS * _TILE)
        acc = numba.carray(_rows_tile_floats(), _ROWS * _TILE)
        levels = np.empty(_ROWS * k, dtype=np.int16)
        min_scales = np.empty(_ROWS * (k // 16), dtype=np.int32)
        factors = np.empty(_ROWS * nb, dtype=np.float32)
        min_factors = np.empty(_ROWS * nb, dtype=np.float32)
        min_sum = np.empty(_ROWS * _TILE, dtype=np.int32)
        for group in range(c * groups // chunks, (c + 1) * groups // chunks):
            r0 = group * _ROWS
            count = min(_ROWS, m - r0)
            for q in range(_ROWS):
                for b in range(nb):
                    if q < count:
                        factors[q * nb + b], min_factors[q * nb + b] = unpack_block_k(
                            raw[r0 + q], b, kind, w, sc, mn
                        )
                    else:  # past the weight's end: zeros, never written out
                        factors[q * nb + b], min_factors[q * nb + b] = 0.0, 0.0
                        for j in range(256):
                            w[j] = 0
                        for g in range(16):
                            sc[g], mn[g] = 0, 0
                    # each level times its group's scale (at most 127 · 32: int16 holds it), so
                    # that a super-block's Σ_g sc_g·Σ level·x is one run of products
                    for j in range(256):
                        levels[q * k + b * 256 + j] = w[j] * sc[j // 16]
                    for g in range(16):
                        min_scales[q * (k // 16) + b * 16 + g] = mn[g]
            for tile in range(n_tiles):
                for i in range(_ROWS * _TILE):
                    acc[i] = 0.0
                tile_at = tile * k * _TILE
                for b in range(nb):
                    for i in range(_ROWS * _TILE):
                        isum[i] = 0
                        min_sum[i] = 0
                    for run in range(b * 256, b * 256 + 256, 32):
                        mac_pairs(isum_at, levels, run, k, xt, tile_at + run * _TILE, 16)
                    for g in range(b * 16, b * 16 + 16):
                        for q in range(_ROWS):
                            group_min = min_scales[q * (k // 16) + g]
                            for i in range(_TILE):
                                min_sum[q * _TILE + i] += group_min * xsumt[tile, g, i]
                    for q in range(_ROWS):
                        factor, min_factor = factors[q * nb + b], min_factors[q * nb + b]
                        for i in range(_TILE):
                            xd = xdt[tile, b, i]
                            acc[q * _TILE + i] += (factor * xd) * _F32(isum[q * _TILE + i]) - (
                                min_factor * xd
                            ) * _F32(min_sum[q * _TILE + i])
                for q in range(count):
                    for i in range(min(_TILE, t_count - tile * _TILE)):
                        out[tile * _TILE + i, r0 + q] = acc[q * _TILE + i]


_float_lanes = stack_array(16, np.float32)


@inline
def _dot_f32(w: np.ndarray, x: np.ndarray, lanes: np.ndarray) -> float:
    """w · x in float32 with 16 running sums in `lanes` (stack memory: so that the loop
    vectorizes without fastmath)."""
    k = w.shape[0]
    for lane in range(16):
        lanes[lane] = 0.0
    stop = k - k % 16
    for j0 in range(0, stop, 16):
        for lane in range(16):
            lanes[lane] += w[j0 + lane] * x[j0 + lane]
    total = _F32(0.0)
    for lane in range(16):
        total += lanes[lane]
    for j in range(stop, k):
        total += w[j] * x[j]
    return total


@pjit
def matmul_f32(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out[t, r] = w[r] · x[t] for an f32 weight [M, K]."""
    m = w.shape[0]
    t_count = x.shape[0]
    chunks = min(m, _CHUNKS)
    for c in prange(chunks):
        lanes = numba.carray(_float_lanes(), 16)
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            for t in range(t_count):
                out[t, r] = _dot_f32(w[r], x[t], lanes)


@pjit
def matmul_half(
    bits: np.ndarray, is_bf16: bool, table: np.ndarray, x: np.ndarray, out: np.ndarray
) -> None:
    """out[t, r] = w[r] · x[t] for an f16 or bf16 weight given as its uint16 bits [M, K]; x has
    been rounded to the weight's type, as ggml converts activations before the dot product."""
    m, k = bits.shape
    t_count = x.shape[0]
    chunks = min(m, _CHUNKS)
    for c in prange(chunks):
        lanes = numba.carray(_float_lanes(), 16)
        w = np.empty(k, dtype=np.float32)
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            for j in range(k):
                if is_bf16:
                    w[j] = bf16_bits_to_f32(bits[r, j])
                else:
                    w[j] = table[bits[r, j]]
            for t in range(t_count):
                out[t, r] = _dot_f32(w, x[t], lanes)


@pjit
def round_rows(x: np.ndarray, to_bf16: bool, out: np.ndarray) -> None:
    """x [T, K] rounded to f16 (or bf16), kept as float32."""
    for t in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[t, j] = round_bf16(x[t, j]) if to_bf16 else round_f16(x[t, j])


# The kernels the wrappers call: one inlined copy of a loop per weight type, each compiled with
# `kind` a constant, so that LLVM keeps only that type's unpacking and vectorizes it (with `kind`
# a variable, the branches between the types' unpackers block vectorization: 2-3x slower).


@pjit
def matmul_q32_rows(
    addresses: np.ndarray, rows: np.ndarray, row_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """matmul rows path for the 32-element types (see _matmul_q32_rows)."""
    if kind == Q4_0:
        _matmul_q32_rows(addresses, rows, row_bytes, Q4_0, xq, xd, xs, xsum, out)
    elif kind == Q4_1:
        _matmul_q32_rows(addresses, rows, row_bytes, Q4_1, xq, xd, xs, xsum, out)
    elif kind == Q5_0:
        _matmul_q32_rows(addresses, rows, row_bytes, Q5_0, xq, xd, xs, xsum, out)
    elif kind == Q5_1:
        _matmul_q32_rows(addresses, rows, row_bytes, Q5_1, xq, xd, xs, xsum, out)
    elif kind == Q8_0:
        _matmul_q32_rows(addresses, rows, row_bytes, Q8_0, xq, xd, xs, xsum, out)
    elif kind == IQ4_NL:
        _matmul_q32_rows(addresses, rows, row_bytes, IQ4_NL, xq, xd, xs, xsum, out)


@pjit
def matmul_qk_rows(
    addresses: np.ndarray, rows: np.ndarray, row_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xs: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """matmul rows path for the K-quants (see _matmul_qk_rows)."""
    if kind == Q2_K:
        _matmul_qk_rows(addresses, rows, row_bytes, Q2_K, xq, xd, xs, out)
    elif kind == Q3_K:
        _matmul_qk_rows(addresses, rows, row_bytes, Q3_K, xq, xd, xs, out)
    elif kind == Q4_K:
        _matmul_qk_rows(addresses, rows, row_bytes, Q4_K, xq, xd, xs, out)
    elif kind == Q5_K:
        _matmul_qk_rows(addresses, rows, row_bytes, Q5_K, xq, xd, xs, out)
    elif kind == Q6_K:
        _matmul_qk_rows(addresses, rows, row_bytes, Q6_K, xq, xd, xs, out)


@pjit
def matmul_q32_tiles(
    raw: np.ndarray, kind: int, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, out: np.ndarray
) -> None:
    """matmul tiles path for the 32-element types (see _matmul_q32_tiles)."""
    if kind == Q4_0:
        _matmul_q32_tiles(raw, Q4_0, xq, xd, xs, out)
    elif kind == Q4_1:
        _matmul_q32_tiles(raw, Q4_1, xq, xd, xs, out)
    elif kind == Q5_0:
        _matmul_q32_tiles(raw, Q5_0, xq, xd, xs, out)
    elif kind == Q5_1:
        _matmul_q32_tiles(raw, Q5_1, xq, xd, xs, out)
    elif kind == Q8_0:
        _matmul_q32_tiles(raw, Q8_0, xq, xd, xs, out)
    elif kind == IQ4_NL:
        _matmul_q32_tiles(raw, IQ4_NL, xq, xd, xs, out)


@pjit
def matmul_qk_tiles(
    raw: np.ndarray, kind: int, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, out: np.ndarray
) -> None:
    """matmul tiles path for the K-quants (see _matmul_qk_tiles)."""
    if kind == Q2_K:
        _matmul_qk_tiles(raw, Q2_K, xq, xd, xs, out)
    elif kind == Q3_K:
        _matmul_qk_tiles(raw, Q3_K, xq, xd, xs, out)
    elif kind == Q4_K:
        _matmul_qk_tiles(raw, Q4_K, xq, xd, xs, out)
    elif kind == Q5_K:
        _matmul_qk_tiles(raw, Q5_K, xq, xd, xs, out)
    elif kind == Q6_K:
        _matmul_qk_tiles(raw, Q6_K, xq, xd, xs, out)


# ---- Q4_0 and Q4_1 decode products on blocks repacked 8 rows at a time ---------------------------

# Q8_0's levels + 128 reach 255, whose pair sums overflow AVX2's 16-bit form: VNNI only.
_X8_AVX2_TYPES = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K}
X8_TYPES = frozenset(
    _X8_AVX2_TYPES if X8_VARIANT == X8_AVX2
    else _X8_AVX2_TYPES | {GGMLType.Q8_0} if X8_VARIANT == X8_VNNI
    else ()
)  # fmt: skip
_X8_K_LAYOUTS = {GGMLType.Q4_K: X8_Q4_K, GGMLType.Q6_K: X8_Q6_K}
_BYTE_LEVELS = {GGMLType.Q8_0: 128, GGMLType.Q5_0: 16}  # x8 types stored a byte a level, less
_acc_8 = stack_array(8 * X8_TOKENS, np.float32)


_REPACK_ROWS_BYTES = 4 << 20  # rows of the stored blocks repacked (then released) at a time


def repack_x8(raw: np.ndarray, weight_type: GGMLType, release: bool = False) -> np.ndarray:
    """Q4_0 / Q4_1 / Q5_0 / Q8_0 rows [M, row bytes] (M a multiple of 8) as groups of 8 rows
    [M / 8, group bytes]: block by block, the 8 rows' f16 d, then (Q4_1) their 8 f16 m, then
    their levels in chunks, each 4 bytes of every row in turn, which `simd.block_x8` multiplies
    in one pass. Q4_0 and Q4_1 keep two levels a byte (a chunk's low nibbles are levels 4c..4c+3,
    its high ones 16 + 4c..); Q5_0 and Q8_0 take a byte a level, unsigned (Q5_0's 0..31 with its
    fifth bits put back, Q8_0's + 128). Q4_K and Q6_K: see `simd.block_x8_k`.

    With `release`, the stored blocks' file pages are handed back (`release_file_pages`) a few
    MiB of rows at a time as they are repacked, so that a large weight (Gemma 3's 178 MB
    embedding table, its output) is never resident twice."""
    m, row_bytes = raw.shape
    size = weight_type.type_size
    nb = row_bytes // size
    if weight_type in _X8_K_LAYOUTS:
        group_bytes = nb * X8_K_BYTES[_X8_K_LAYOUTS[weight_type]]
    else:
        group_bytes = nb * 8 * ((2 + 32) if weight_type in _BYTE_LEVELS else size)
    packed = np.empty((m // 8, group_bytes), dtype=np.uint8)
    step = max(8, _REPACK_ROWS_BYTES // row_bytes // 8 * 8)
    for start in range(0, m, step):
        rows = np.ascontiguousarray(raw[start : start + step])
        groups = packed[start // 8 : (start + step) // 8]
        if weight_type in _X8_K_LAYOUTS:
            _repack_k_groups(rows, int(weight_type), size, groups)
        else:
            _repack_groups(rows, int(weight_type), size, groups)
        if release:
            release_file_pages(raw[start : start + step])
    if release:
        release_file_pages(raw)  # the pages that straddled two runs of rows
    return packed


@pjit
def _repack_groups(raw: np.ndarray, kind: int, size: int, packed: np.ndarray) -> None:
    nb = raw.shape[1] // size
    heads = 4 if kind == Q4_1 else 2  # bytes of f16 factors a block: d (and m)
    chunks = 8 if kind in (Q5_0, Q8_0) else 4
    for g in prange(packed.shape[0]):
        rows = raw[g * 8 : g * 8 + 8]
        pos = 0  # the copy is written in order; the 8 rows' blocks are read from L1
        for b in range(nb):
            at = b * size
            for h in range(0, heads, 2):  # d (and m): 8 rows' f16 side by side
                for r in range(8):
                    packed[g, pos] = rows[r, at + h]
                    packed[g, pos + 1] = rows[r, at + h + 1]
                    pos += 2
            for c in range(chunks):
                for r in range(8):
                    if kind == Q5_0:  # d qh[4] qs[16]: level j = nibble j | bit j of qh << 4
                        for j in range(4 * c, 4 * c + 4):
                            nibble = (rows[r, at + 6 + j % 16] >> (4 if j >= 16 else 0)) & 15
                            high = (rows[r, at + 2 + j // 8] >> (j % 8)) & 1
                            packed[g, pos] = np.uint8(nibble | (high << 4))
                            pos += 1
                    else:
                        for i in range(4):
                            byte = rows[r, at + heads + 4 * c + i]
                            packed[g, pos] = byte ^ np.uint8(0x80) if kind == Q8_0 else byte
                            pos += 1


@pjit
def _repack_k_groups(raw: np.ndarray, kind: int, size: int, packed: np.ndarray) -> None:
    nb = raw.shape[1] // size
    block = packed.shape[1] // nb
    for g in prange(packed.shape[0]):
        w = np.empty((8, 256), dtype=np.int32)
        sc = np.empty((8, 16), dtype=np.int32)
        mn = np.empty((8, 16), dtype=np.int32)
        for b in range(nb):
            at, out = b * size, b * block
            for r in range(8):
                unpack_block_k(raw[g * 8 + r], b, kind, w[r], sc[r], mn[r])
                d_at = at + (208 if kind == Q6_K else 0)
                packed[g, out + 2 * r] = raw[g * 8 + r, d_at]
                packed[g, out + 2 * r + 1] = raw[g * 8 + r, d_at + 1]
                if kind == Q4_K:  # dmin; a sub-block s's scale and min are sc[2s], mn[2s]
                    packed[g, out + 16 + 2 * r] = raw[g * 8 + r, at + 2]
                    packed[g, out + 17 + 2 * r] = raw[g * 8 + r, at + 3]
                    for sub in range(8):
                        packed[g, out + 32 + 8 * sub + r] = np.uint8(sc[r, 2 * sub])
                        packed[g, out + 96 + 8 * sub + r] = np.uint8(mn[r, 2 * sub])
                else:
                    for group in range(16):
                        packed[g, out + 16 + 8 * group + r] = np.uint8(sc[r, group] & 255)
            if kind == Q4_K:  # each stored byte as is: its two nibbles are two sub-blocks' levels
                for c in range(32):
                    for r in range(8):
                        for i in range(4):
                            packed[g, out + 160 + 32 * c + 4 * r + i] = raw[
                                g * 8 + r, at + 16 + 4 * c + i
                            ]
            else:
                for c in range(64):
                    for r in range(8):
                        for i in range(4):
                            level = w[r, 4 * c + i] + 32
                            packed[g, out + 144 + 32 * c + 4 * r + i] = np.uint8(level)


_packed: dict[int, np.ndarray] = {}


def packed_x8(raw: np.ndarray, weight_type: GGMLType) -> np.ndarray:
    """`repack_x8` of a weight's blocks, made once per weight and kept while the weight lives:
    every graph compiled for a model shares one copy. The file pages the blocks were read from
    are then handed back (`release_file_pages`): products no longer read them."""
    key = id(raw)
    packed = _packed.get(key)
    if packed is None:
        packed = _packed[key] = repack_x8(raw, weight_type, release=True)
        weakref.finalize(raw, _packed.pop, key, None)
    return packed


def release_file_pages(array: np.ndarray) -> bool:
    """Drop the whole pages of `array` from this process's resident memory when it is a view of a
    read-only file mapping (a GGUF file's tensor data): they stay in the page cache and come back
    on the next read, so a weight read only through its repacked copy stops counting twice.
    Anything else (memory of our own, which MADV_DONTNEED would zero) is left alone."""
    base = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.obj if isinstance(base, memoryview) else base.base
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or base.closed:
        return False
    start = np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    first = -(-(array.ctypes.data - start) // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = (array.ctypes.data - start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if stop <= first:
        return False
    base.madvise(mmap.MADV_DONTNEED, first, stop - first)
    return True


def _block_x8(acc_at, group, at, layout, offset, xq, xd, xs, xsum, t, b, tokens):  # noqa: ANN001, ANN202
    """One repacked block (super-block for the K-quants) of 8 rows times activation rows t ..
    t + tokens - 1: `block_x8_k` or `block_x8`, chosen by the layout (a constant) when typed."""


@overload(_block_x8, jit_options={"cache": True}, inline="always")
def _block_x8_overload(acc_at, group, at, layout, offset, xq, xd, xs, xsum, t, b, tokens):  # noqa: ANN001, ANN202
    if getattr(layout, "literal_value", None) in (X8_Q4_K, X8_Q6_K):

        def k_quant(acc_at, group, at, layout, offset, xq, xd, xs, xsum, t, b, tokens):  # noqa: ANN001, ANN202
            block_x8_k(acc_at, group, at, layout, xq, xd, xsum, t, b, tokens, X8_VARIANT)

        return k_quant

    def thirty_two(acc_at, group, at, layout, offset, xq, xd, xs, xsum, t, b, tokens):  # noqa: ANN001, ANN202
        block_x8(acc_at, group, at, offset, layout, xq, xd, xs, xsum, t, b, tokens, X8_VARIANT)

    return thirty_two


@inline
def _matmul_x8_rows(
    addresses: np.ndarray, groups: np.ndarray, group_bytes: int, layout: int, offset: int,
    xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """out[t, 8g + r] = row r of group g · activation row t, for repacked weights (a row table
    of groups): what _matmul_q32_rows (Q4_0 / Q4_1 / Q5_0 / Q8_0) and _matmul_qk_rows (Q4_K /
    Q6_K) compute, to the bit, 8 weight rows and X8_TOKENS activation rows per pass (then the
    rows left one at a time)."""
    total = out.shape[1] // 8
    t_count, k = xq.shape
    nb = k // (256 if layout == X8_Q4_K or layout == X8_Q6_K else 32)  # noqa: SIM109 (numba)
    block_bytes = group_bytes // nb
    chunks = min(total, _CHUNKS)
    whole = t_count - t_count % X8_TOKENS
    for c in prange(chunks):
        acc_at = _acc_8()
        acc = numba.carray(acc_at, 8 * X8_TOKENS)
        for g in range(c * total // chunks, (c + 1) * total // chunks):
            group = _weight_row(addresses, groups, group_bytes, g)
            for t in range(0, whole, X8_TOKENS):
                for i in range(8 * X8_TOKENS):
                    acc[i] = 0.0
                for b in range(nb):
                    _block_x8(acc_at, group, b * block_bytes, layout, offset, xq, xd, xs, xsum,
                              t, b, X8_TOKENS)  # fmt: skip
                for i in range(X8_TOKENS):
                    for r in range(8):
                        out[t + i, g * 8 + r] = acc[8 * i + r]
            for t in range(whole, t_count):
                for r in range(8):
                    acc[r] = 0.0
                for b in range(nb):
                    _block_x8(acc_at, group, b * block_bytes, layout, offset, xq, xd, xs, xsum,
                              t, b, 1)  # fmt: skip
                for r in range(8):
                    out[t, g * 8 + r] = acc[r]


@pjit
def matmul_x8_rows(
    addresses: np.ndarray, groups: np.ndarray, group_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xs: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """The rows path on weights repacked by `repack_x8` (see _matmul_x8_rows)."""
    if kind == Q4_0:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q4, 8, xq, xd, xs, xsum, out)
    elif kind == Q4_1:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q4_MIN, 0, xq, xd, xs, xsum, out)
    elif kind == Q8_0:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q8, 128, xq, xd, xs, xsum, out)
    elif kind == Q5_0:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q8, 16, xq, xd, xs, xsum, out)


@pjit
def matmul_x8k_rows(
    addresses: np.ndarray, groups: np.ndarray, group_bytes: int, kind: int, xq: np.ndarray,
    xd: np.ndarray, xsum: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """The K-quants' rows path on weights repacked by `repack_x8` (q8_K activations: no q8_1
    sums, `xsum` stands in their place, unread)."""
    if kind == Q4_K:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q4_K, 0, xq, xd, xsum, xsum, out)
    elif kind == Q6_K:
        _matmul_x8_rows(addresses, groups, group_bytes, X8_Q6_K, 0, xq, xd, xsum, xsum, out)


def activation_family(weight_type: GGMLType) -> str:
    """What activations are converted to before a product with a weight of `weight_type`:
    weights of one family can share one conversion of the same activations."""
    if weight_type in Q8_K_TYPES:
        return "q8_K"
    if weight_type in Q8_1_TYPES:
        return "q8_1"
    if weight_type in Q8_0_TYPES:
        return "q8_0"
    return weight_type.name.lower()  # f32, f16, bf16: rounded to the weight's type


def prepare_activations(weight_type: GGMLType, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """x [T, K] f32 (contiguous) as `mul_mat_prepared` takes it for weights of this family:
    q8 blocks (as tiles for batches over ROW_TOKENS rows), or x rounded to f16 / bf16."""
    if weight_type == GGMLType.F32:
        return (x,)
    if weight_type in (GGMLType.F16, GGMLType.BF16):
        rounded = np.empty_like(x)
        round_rows(x, weight_type == GGMLType.BF16, rounded)
        return (rounded,)
    blocks = quantize_activations(x, weight_type)
    if x.shape[0] <= ROW_TOKENS or X8_TYPES:
        return blocks  # the x8 kernels take rows of any count (tiles made where still needed)
    return _as_tiles(weight_type, blocks)


def _as_tiles(weight_type: GGMLType, blocks: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Activation blocks in rows as the prompt (tiles) kernels take them; the prompt kernels
    take levels as signed int16, so no 32-element block sums."""
    scales_and_sums = blocks[1:3] if weight_type not in Q8_K_TYPES else blocks[1:]
    return (_pair_tiles(blocks[0]), *(_tiles(a) for a in scales_and_sums))


class RowTable:
    """The rows of one or more quantized weights with the same row length, in order, as the rows
    kernels reach them: each weight's address and row count. q, k and v (or gate and up) times one
    activation are then one kernel call and one parallel region. Holds the weights, so that the
    addresses stay valid.

    Given the weights' type, Q4_0 / Q4_1 / Q8_0 weights of whole groups of 8 rows go through
    their repacked copies (`x8`; `rows` then counts groups and `row_bytes` is a group's)."""

    def __init__(self, weights: list[np.ndarray], weight_type: GGMLType | None = None) -> None:
        weights = [np.ascontiguousarray(w) for w in weights]
        if len({w.shape[1] for w in weights}) != 1:
            raise ValueError("a row table's weights must have one row length")
        self.total = sum(w.shape[0] for w in weights)
        self.x8 = weight_type in X8_TYPES and all(w.shape[0] % 8 == 0 for w in weights)
        if self.x8:
            weights = [packed_x8(w, weight_type) for w in weights]
        self.weights = weights
        self.addresses = np.array([w.ctypes.data for w in weights], dtype=np.int64)
        self.rows = np.array([w.shape[0] for w in weights], dtype=np.int64)
        self.row_bytes = weights[0].shape[1]


def mul_mat_rows(
    weight_type: GGMLType, table: RowTable, prepared: tuple[np.ndarray, ...], t: int
) -> np.ndarray:
    """Up to ROW_TOKENS activation rows, as `prepare_activations` made them, times the weights of
    a row table (one quantized type) -> [T, Σ M], the weights' results side by side."""
    out = np.empty((t, table.total), dtype=np.float32)
    if table.x8:
        kernel = matmul_x8k_rows if weight_type in Q8_K_TYPES else matmul_x8_rows
    else:
        kernel = matmul_qk_rows if weight_type in Q8_K_TYPES else matmul_q32_rows
    kernel(table.addresses, table.rows, table.row_bytes, int(weight_type), *prepared, out)
    return out


def mul_mat_prepared(
    weight_type: GGMLType, weight: np.ndarray, prepared: tuple[np.ndarray, ...], t: int
) -> np.ndarray:
    """T activation rows, as `prepare_activations` made them, times a 2-D weight -> [T, M].

    `weight` is the raw blocks (uint8 [M, row bytes]) for quantized types and BF16, the numpy
    array itself for F32 and F16."""
    if weight_type not in FLOAT_TYPES and prepared[1].ndim == 2:  # activations in rows
        table = RowTable([weight], weight_type)
        if t <= ROW_TOKENS or table.x8:  # prompts too: x8 beats the tiles kernel (157 vs 147
            return mul_mat_rows(weight_type, table, prepared, t)  # GMAC/s, Q4_1 1536x576x512)
        prepared = _as_tiles(weight_type, prepared)
    out = np.empty((t, weight.shape[0]), dtype=np.float32)
    kind = int(weight_type)
    if weight_type == GGMLType.F32:
        matmul_f32(weight, prepared[0], out)
    elif weight_type in (GGMLType.F16, GGMLType.BF16):
        bits = weight.view(np.uint16)
        matmul_half(bits, weight_type == GGMLType.BF16, F16_TO_F32, prepared[0], out)
    elif weight_type in Q8_K_TYPES:
        matmul_qk_tiles(weight, kind, *prepared, out)
    else:
        matmul_q32_tiles(weight, kind, *prepared, out)
    return out


def mul_mat(weight_type: GGMLType, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x [T, K] f32 (contiguous) times a 2-D weight of `weight_type` -> [T, M]."""
    prepared = prepare_activations(weight_type, x)
    return mul_mat_prepared(weight_type, weight, prepared, x.shape[0])


# ---- rows of a quantized table ------------------------------------------------------------------


@inline
def _get_rows_q32(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] dequantized (level·d + m, the reference's order of operations)."""
    for i in prange(ids.shape[0]):
        w = numba.carray(_levels_32(), 32)
        row = raw[ids[i]]
        for b in range(out.shape[1] // 32):
            d, minimum = unpack_block_32(row, b, kind, w)
            for j in range(32):
                out[i, b * 32 + j] = _F32(w[j]) * d + minimum


@inline
def _get_rows_qk(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] dequantized: (d·sc)·level - (dmin·mn), as the reference computes."""
    for i in prange(ids.shape[0]):
        w = numba.carray(_levels_256(), 256)
        sc = numba.carray(_group_ints(), 16)
        mn = numba.carray(_tile_ints(), 16)
        row = raw[ids[i]]
        for b in range(out.shape[1] // 256):
            d, dmin = unpack_block_k(row, b, kind, w, sc, mn)
            for g in range(16):
                scale = d * _F32(sc[g])
                minimum = dmin * _F32(mn[g])
                for j in range(16):
                    out[i, b * 256 + g * 16 + j] = scale * _F32(w[g * 16 + j]) - minimum


@pjit
def get_rows_q32(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """get_rows for the 32-element types (see _get_rows_q32)."""
    if kind == Q4_0:
        _get_rows_q32(raw, Q4_0, ids, out)
    elif kind == Q4_1:
        _get_rows_q32(raw, Q4_1, ids, out)
    elif kind == Q5_0:
        _get_rows_q32(raw, Q5_0, ids, out)
    elif kind == Q5_1:
        _get_rows_q32(raw, Q5_1, ids, out)
    elif kind == Q8_0:
        _get_rows_q32(raw, Q8_0, ids, out)
    elif kind == IQ4_NL:
        _get_rows_q32(raw, IQ4_NL, ids, out)


@pjit
def get_rows_qk(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """get_rows for the K-quants (see _get_rows_qk)."""
    if kind == Q2_K:
        _get_rows_qk(raw, Q2_K, ids, out)
    elif kind == Q3_K:
        _get_rows_qk(raw, Q3_K, ids, out)
    elif kind == Q4_K:
        _get_rows_qk(raw, Q4_K, ids, out)
    elif kind == Q5_K:
        _get_rows_qk(raw, Q5_K, ids, out)
    elif kind == Q6_K:
        _get_rows_qk(raw, Q6_K, ids, out)


@pjit
def get_rows_bf16(bits: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    for i in prange(ids.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = bf16_bits_to_f32(bits[ids[i], j])


def get_rows(weight_type: GGMLType, raw: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of a quantized or BF16 table (raw blocks [N, row bytes]) as f32 [len(ids), k]."""
    out = np.empty((ids.shape[0], k), dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    if weight_type == GGMLType.BF16:
        get_rows_bf16(raw.view(np.uint16), ids, out)
    elif weight_type in Q8_K_TYPES:
        get_rows_qk(raw, int(weight_type), ids, out)
    else:
        get_rows_q32(raw, int(weight_type), ids, out)
    return out
