"""Quantized matrix products on the GGUF blocks as stored, the way ggml's CPU backend computes them.

A weight of a quantized type is multiplied with activations quantized to 8 bits in blocks (ggml's
"vec_dot type"): q8_0 for Q4_0, Q5_0, Q8_0 and IQ4_NL, q8_1 (q8_0 plus the block's sum) for Q4_1
and Q5_1, q8_K (256-element blocks with sums of 16) for the K-quants. The products of the 8-bit
levels are summed exactly in int32; only the block scales are floats. Activations round exactly as
`llmrt.reference` rounds them (`_round_q8_0`, `_round_q8_k`), so the only difference from the
reference is the order of float additions.

Layout of an activation batch x [T, K] once quantized: `xq` int8 [T, K] (the levels), `xd` f32
[T, K / block] (the scales), and per type family `xs` f32 [T, K / 32] (q8_1's f16 d·Σq) or
`xsum` int32 [T, K / 16] (q8_K's sums of 16 levels).

A product runs over weight rows in chunks, one chunk per prange iteration: each row is unpacked
once into int8 levels and integer scales, then dotted with every activation row of the batch, so a
prompt reads each weight block once per batch, not once per token.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llmrt.gguf.constants import GGMLType
from llmrt_cpu.jit import jit, pjit

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


@jit
def _byte(raw: np.ndarray, r: int, at: int) -> int:
    """Byte `at` of row r, widened (numba would otherwise mix uint8 and int64 into floats)."""
    return np.int64(raw[r, at])


@jit
def _f16_at(raw: np.ndarray, r: int, at: int) -> float:
    """The little-endian f16 at byte `at` of row r."""
    return f16_bits_to_f32(_byte(raw, r, at) | (_byte(raw, r, at + 1) << 8))


@jit
def _u32_at(raw: np.ndarray, r: int, at: int) -> int:
    return (
        _byte(raw, r, at)
        | (_byte(raw, r, at + 1) << 8)
        | (_byte(raw, r, at + 2) << 16)
        | (_byte(raw, r, at + 3) << 24)
    )


@jit
def _i8(byte: int) -> int:
    """A stored byte read as a signed int8."""
    return (np.int32(byte) ^ 0x80) - 0x80


# ---- activations to q8 blocks -------------------------------------------------------------------


@pjit
def quantize_q8_0(x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray) -> None:
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
            if with_sums:
                xs[t, b] = round_f16(d * _F32(total))


@pjit
def quantize_q8_k(x: np.ndarray, xq: np.ndarray, xd: np.ndarray, xsum: np.ndarray) -> None:
    """Rows of x [T, K] to q8_K blocks of 256: the element of largest magnitude (the first such)
    maps to -127 exactly; scale 1/iscale in f32; xsum holds the sums of each 16 levels."""
    t_count, k = x.shape
    for t in prange(t_count):
        for b in range(k // 256):
            base = b * 256
            peak = x[t, base]
            for j in range(1, 256):
                if abs(x[t, base + j]) > abs(peak):
                    peak = x[t, base + j]
            iscale = _F32(-127.0) / peak if peak != 0 else _F32(0.0)
            for g in range(16):
                total = 0
                for j in range(16):
                    level = np.int32(min(np.rint(x[t, base + g * 16 + j] * iscale), _F32(127.0)))
                    xq[t, base + g * 16 + j] = level
                    total += level
                xsum[t, b * 16 + g] = total
            xd[t, b] = _F32(1.0) / iscale if iscale != 0 else _F32(0.0)


def quantize_activations(x: np.ndarray, weight_type: GGMLType) -> tuple[np.ndarray, ...]:
    """x [T, K] f32 to the q8 blocks a weight of `weight_type` is multiplied with:
    (xq, xd, xs) for the 32-element families, (xq, xd, xsum) for the K-quants."""
    t, k = x.shape
    xq = np.empty((t, k), dtype=np.int8)
    if weight_type in Q8_K_TYPES:
        xd = np.empty((t, k // 256), dtype=np.float32)
        xsum = np.empty((t, k // 16), dtype=np.int32)
        quantize_q8_k(x, xq, xd, xsum)
        return xq, xd, xsum
    xd = np.empty((t, k // 32), dtype=np.float32)
    xs = np.empty((t, k // 32 if weight_type in Q8_1_TYPES else 0), dtype=np.float32)
    quantize_q8_0(x, xq, xd, xs)
    return xq, xd, xs


# ---- weight rows to int8 levels -----------------------------------------------------------------


@jit
def unpack_row_32(
    raw: np.ndarray, r: int, kind: int, wq: np.ndarray, wd: np.ndarray, wm: np.ndarray
) -> None:
    """Row r of a 32-element block type to its levels wq (int8 [K]), block scales wd and block
    minimums wm (0 for the symmetric types): element = wd·wq + wm."""
    nb = wd.shape[0]
    if kind == Q4_0:
        for b in range(nb):
            at = b * 18
            wd[b] = _f16_at(raw, r, at)
            wm[b] = 0.0
            for j in range(16):
                byte = _byte(raw, r, at + 2 + j)
                wq[b * 32 + j] = np.int32(byte & 15) - 8
                wq[b * 32 + 16 + j] = np.int32(byte >> 4) - 8
    elif kind == Q4_1:
        for b in range(nb):
            at = b * 20
            wd[b] = _f16_at(raw, r, at)
            wm[b] = _f16_at(raw, r, at + 2)
            for j in range(16):
                byte = _byte(raw, r, at + 4 + j)
                wq[b * 32 + j] = byte & 15
                wq[b * 32 + 16 + j] = byte >> 4
    elif kind in (Q5_0, Q5_1):
        # bit 4 of element j is bit j of the u32 qh; Q5_0 centres the levels on 16
        size, qh_at, offset = (22, 2, 16) if kind == Q5_0 else (24, 4, 0)
        for b in range(nb):
            at = b * size
            wd[b] = _f16_at(raw, r, at)
            wm[b] = 0.0 if kind == Q5_0 else _f16_at(raw, r, at + 2)
            qh = _u32_at(raw, r, at + qh_at)
            for j in range(16):
                byte = np.int32(_byte(raw, r, at + qh_at + 4 + j))
                low_high = ((qh >> j) & 1) << 4
                high_high = ((qh >> (j + 16)) & 1) << 4
                wq[b * 32 + j] = ((byte & 15) | low_high) - offset
                wq[b * 32 + 16 + j] = ((byte >> 4) | high_high) - offset
    elif kind == Q8_0:
        for b in range(nb):
            at = b * 34
            wd[b] = _f16_at(raw, r, at)
            wm[b] = 0.0
            for j in range(32):
                wq[b * 32 + j] = _i8(_byte(raw, r, at + 2 + j))
    elif kind == IQ4_NL:
        for b in range(nb):
            at = b * 18
            wd[b] = _f16_at(raw, r, at)
            wm[b] = 0.0
            for j in range(16):
                byte = _byte(raw, r, at + 2 + j)
                wq[b * 32 + j] = IQ4_NL_LEVELS[byte & 15]
                wq[b * 32 + 16 + j] = IQ4_NL_LEVELS[byte >> 4]


@jit
def _scale_min_k4(raw: np.ndarray, r: int, at: int, j: int) -> tuple[int, int]:
    """Sub-block j's 6-bit scale and min from the 12 packed bytes at `at` (get_scale_min_k4)."""
    if j < 4:
        return np.int32(_byte(raw, r, at + j) & 63), np.int32(_byte(raw, r, at + j + 4) & 63)
    scale = np.int32(_byte(raw, r, at + j + 4) & 15) | (
        np.int32(_byte(raw, r, at + j - 4) >> 6) << 4
    )
    minimum = np.int32(_byte(raw, r, at + j + 4) >> 4) | (np.int32(_byte(raw, r, at + j) >> 6) << 4)
    return scale, minimum


@jit
def unpack_row_k(
    raw: np.ndarray, r: int, kind: int, wq: np.ndarray, wsc: np.ndarray, wmn: np.ndarray,
    wd: np.ndarray, wdmin: np.ndarray,
) -> None:  # fmt: skip
    """Row r of a K-quant to levels wq (int8 [K]), an integer scale and min per 16 elements (wsc,
    wmn, int32 [K/16]) and f32 super-block factors wd, wdmin: element = wd·wsc·wq - wdmin·wmn."""
    nb = wd.shape[0]
    for b in range(nb):
        q0, g0 = b * 256, b * 16
        if kind == Q2_K:  # scales[16] qs[64] d dmin; levels 0..3, 4-bit scale and min per 16
            at = b * 84
            wd[b] = _f16_at(raw, r, at + 80)
            wdmin[b] = _f16_at(raw, r, at + 82)
            for g in range(16):
                wsc[g0 + g] = _byte(raw, r, at + g) & 15
                wmn[g0 + g] = _byte(raw, r, at + g) >> 4
            for half in range(2):
                for shift in range(4):
                    for lane in range(32):
                        byte = _byte(raw, r, at + 16 + half * 32 + lane)
                        wq[q0 + half * 128 + shift * 32 + lane] = (byte >> (2 * shift)) & 3
        elif kind == Q3_K:  # hmask[32] qs[64] scales[12] d; levels -4..3, 6-bit scales - 32
            at = b * 110
            wd[b] = _f16_at(raw, r, at + 108)
            wdmin[b] = 0.0
            for g in range(16):
                packed = _byte(raw, r, at + 96 + (g % 8))
                low = (packed & 15) if g < 8 else (packed >> 4)
                high = (_byte(raw, r, at + 104 + (g % 4)) >> (2 * (g // 4))) & 3
                wsc[g0 + g] = np.int32(low | (high << 4)) - 32
                wmn[g0 + g] = 0
            for half in range(2):
                for shift in range(4):
                    for lane in range(32):
                        byte = _byte(raw, r, at + 32 + half * 32 + lane)
                        low = np.int32((byte >> (2 * shift)) & 3)
                        set_bit = (_byte(raw, r, at + lane) >> (4 * half + shift)) & 1
                        wq[q0 + half * 128 + shift * 32 + lane] = low - (0 if set_bit else 4)
        elif kind in (Q4_K, Q5_K):  # d dmin scales[12] (qh[32]) qs[128]
            size = 144 if kind == Q4_K else 176
            at = b * size
            qs_at = at + (16 if kind == Q4_K else 48)
            wd[b] = _f16_at(raw, r, at)
            wdmin[b] = _f16_at(raw, r, at + 2)
            for sub in range(8):
                scale, minimum = _scale_min_k4(raw, r, at + 4, sub)
                wsc[g0 + 2 * sub] = scale
                wsc[g0 + 2 * sub + 1] = scale
                wmn[g0 + 2 * sub] = minimum
                wmn[g0 + 2 * sub + 1] = minimum
            # sub-block 2c holds chunk c's low nibbles, 2c + 1 its high nibbles
            for chunk in range(4):
                for lane in range(32):
                    byte = _byte(raw, r, qs_at + chunk * 32 + lane)
                    wq[q0 + chunk * 64 + lane] = byte & 15
                    wq[q0 + chunk * 64 + 32 + lane] = byte >> 4
            if kind == Q5_K:
                for sub in range(8):
                    for lane in range(32):
                        bit = (_byte(raw, r, at + 16 + lane) >> sub) & 1
                        wq[q0 + sub * 32 + lane] += bit << 4
        elif kind == Q6_K:  # ql[128] qh[64] scales int8[16] d; levels -32..31
            at = b * 210
            wd[b] = _f16_at(raw, r, at + 208)
            wdmin[b] = 0.0
            for g in range(16):
                wsc[g0 + g] = _i8(_byte(raw, r, at + 192 + g))
                wmn[g0 + g] = 0
            for half in range(2):
                for i in range(128):  # quarter i // 32 of this half
                    low_byte = _byte(raw, r, at + half * 64 + (i % 64))
                    low = (low_byte & 15) if i < 64 else (low_byte >> 4)
                    high = (_byte(raw, r, at + 128 + half * 32 + (i % 32)) >> (2 * (i // 32))) & 3
                    wq[q0 + half * 128 + i] = np.int32(low | (high << 4)) - 32


# ---- products -----------------------------------------------------------------------------------


@jit
def _dot_block32(wq: np.ndarray, xq: np.ndarray, t: int, base: int) -> int:
    """Σ of 32 level products, in int32 (exact: |Σ| <= 32 · 128 · 127)."""
    total = np.int32(0)
    for j in range(32):
        total = np.int32(total + np.int32(wq[base + j]) * np.int32(xq[t, base + j]))
    return total


@jit
def _dot_group16(wq: np.ndarray, xq: np.ndarray, t: int, base: int) -> int:
    total = np.int32(0)
    for j in range(16):
        total = np.int32(total + np.int32(wq[base + j]) * np.int32(xq[t, base + j]))
    return total


@pjit
def matmul_q32(
    raw: np.ndarray, kind: int, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, out: np.ndarray
) -> None:
    """out[t, r] = row r of a 32-element block weight · activation row t (q8_0 / q8_1 blocks):
    Σ_b d_w·d_x·Σ(levels products) (+ m_w · s_x for the types with a minimum, from q8_1)."""
    m = raw.shape[0]
    t_count, k = xq.shape
    nb = k // 32
    with_min = xs.shape[1] > 0
    chunks = min(m, _CHUNKS)
    for c in prange(chunks):
        wq = np.empty(k, dtype=np.int8)
        wd = np.empty(nb, dtype=np.float32)
        wm = np.empty(nb, dtype=np.float32)
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            unpack_row_32(raw, r, kind, wq, wd, wm)
            for t in range(t_count):
                acc = _F32(0.0)
                for b in range(nb):
                    isum = _dot_block32(wq, xq, t, b * 32)
                    acc += (wd[b] * xd[t, b]) * _F32(isum)
                    if with_min:
                        acc += wm[b] * xs[t, b]
                out[t, r] = acc


@pjit
def matmul_qk(
    raw: np.ndarray, kind: int, xq: np.ndarray, xd: np.ndarray, xsum: np.ndarray, out: np.ndarray
) -> None:
    """out[t, r] = row r of a K-quant weight · activation row t (q8_K blocks): per super-block
    d_x·d_w·Σ_g sc_g·Σ(levels products) - d_x·dmin_w·Σ_g mn_g·Σ(activation levels of g)."""
    m = raw.shape[0]
    t_count, k = xq.shape
    nb = k // 256
    chunks = min(m, _CHUNKS)
    for c in prange(chunks):
        wq = np.empty(k, dtype=np.int8)
        wsc = np.empty(k // 16, dtype=np.int32)
        wmn = np.empty(k // 16, dtype=np.int32)
        wd = np.empty(nb, dtype=np.float32)
        wdmin = np.empty(nb, dtype=np.float32)
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            unpack_row_k(raw, r, kind, wq, wsc, wmn, wd, wdmin)
            for t in range(t_count):
                acc = _F32(0.0)
                for b in range(nb):
                    isum = np.int32(0)
                    msum = np.int32(0)
                    for g in range(b * 16, b * 16 + 16):
                        isum = np.int32(isum + wsc[g] * _dot_group16(wq, xq, t, g * 16))
                        msum = np.int32(msum + wmn[g] * xsum[t, g])
                    d = xd[t, b] * wd[b]
                    dmin = xd[t, b] * wdmin[b]
                    acc += d * _F32(isum) - dmin * _F32(msum)
                out[t, r] = acc


@jit
def _dot_f32(w: np.ndarray, x: np.ndarray, t: int) -> float:
    """w · x[t] in float32 with 8 running sums (so that the loop vectorizes without fastmath)."""
    k = w.shape[0]
    lanes = np.zeros(8, dtype=np.float32)
    stop = k - k % 8
    for j0 in range(0, stop, 8):
        for lane in range(8):
            lanes[lane] += w[j0 + lane] * x[t, j0 + lane]
    total = _F32(0.0)
    for lane in range(8):
        total += lanes[lane]
    for j in range(stop, k):
        total += w[j] * x[t, j]
    return total


@pjit
def matmul_f32(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out[t, r] = w[r] · x[t] for an f32 weight [M, K]."""
    m = w.shape[0]
    t_count = x.shape[0]
    chunks = min(m, _CHUNKS)
    for c in prange(chunks):
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            for t in range(t_count):
                out[t, r] = _dot_f32(w[r], x, t)


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
        w = np.empty(k, dtype=np.float32)
        for r in range(c * m // chunks, (c + 1) * m // chunks):
            for j in range(k):
                if is_bf16:
                    w[j] = bf16_bits_to_f32(bits[r, j])
                else:
                    w[j] = table[bits[r, j]]
            for t in range(t_count):
                out[t, r] = _dot_f32(w, x, t)


@pjit
def round_rows(x: np.ndarray, to_bf16: bool, out: np.ndarray) -> None:
    """x [T, K] rounded to f16 (or bf16), kept as float32."""
    for t in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[t, j] = round_bf16(x[t, j]) if to_bf16 else round_f16(x[t, j])


def mul_mat(weight_type: GGMLType, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x [T, K] f32 (contiguous) times a 2-D weight of `weight_type` -> [T, M].

    `weight` is the raw blocks (uint8 [M, row bytes]) for quantized types and BF16, the numpy
    array itself for F32 and F16."""
    t = x.shape[0]
    m = weight.shape[0]
    out = np.empty((t, m), dtype=np.float32)
    if weight_type == GGMLType.F32:
        matmul_f32(weight, x, out)
    elif weight_type in (GGMLType.F16, GGMLType.BF16):
        is_bf16 = weight_type == GGMLType.BF16
        rounded = np.empty_like(x)
        round_rows(x, is_bf16, rounded)
        matmul_half(weight.view(np.uint16), is_bf16, F16_TO_F32, rounded, out)
    elif weight_type in Q8_K_TYPES:
        xq, xd, xsum = quantize_activations(x, weight_type)
        matmul_qk(weight, int(weight_type), xq, xd, xsum, out)
    else:
        xq, xd, xs = quantize_activations(x, weight_type)
        matmul_q32(weight, int(weight_type), xq, xd, xs, out)
    return out


# ---- rows of a quantized table ------------------------------------------------------------------


@pjit
def get_rows_q32(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] dequantized (levels · d + m, the reference's order of operations)."""
    k = out.shape[1]
    nb = k // 32
    for i in prange(ids.shape[0]):
        wq = np.empty(k, dtype=np.int8)
        wd = np.empty(nb, dtype=np.float32)
        wm = np.empty(nb, dtype=np.float32)
        unpack_row_32(raw, ids[i], kind, wq, wd, wm)
        for b in range(nb):
            for j in range(32):
                out[i, b * 32 + j] = _F32(wq[b * 32 + j]) * wd[b] + wm[b]


@pjit
def get_rows_qk(raw: np.ndarray, kind: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] dequantized: (d·sc)·level - (dmin·mn), as the reference computes."""
    k = out.shape[1]
    nb = k // 256
    for i in prange(ids.shape[0]):
        wq = np.empty(k, dtype=np.int8)
        wsc = np.empty(k // 16, dtype=np.int32)
        wmn = np.empty(k // 16, dtype=np.int32)
        wd = np.empty(nb, dtype=np.float32)
        wdmin = np.empty(nb, dtype=np.float32)
        unpack_row_k(raw, ids[i], kind, wq, wsc, wmn, wd, wdmin)
        for g in range(k // 16):
            scale = wd[g // 16] * _F32(wsc[g])
            minimum = wdmin[g // 16] * _F32(wmn[g])
            for j in range(16):
                out[i, g * 16 + j] = scale * _F32(wq[g * 16 + j]) - minimum


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
