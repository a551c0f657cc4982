"""K-quants: 256-element super-blocks of 16 or 8 sub-blocks with quantized scales (Q2_K..Q8_K).

Dequantization of every K type, and quantization to Q2_K..Q6_K and Q8_K following ggml's
reference quantizers (quantize_row_q*_K_ref with make_qkx2/qx/q3_quants) step by step
in float32, with sums accumulated left to right as its C loops do; the two searches (make_qkx2,
make_qx) are numba loops, the packing numpy. The `gguf` package has no K quantizers to compare
with: the tests check error bounds, and benchmarks/quantize_vs_llama_cpp.sh checks the files
byte for byte against llama-quantize's (BENCHMARKS.md).
"""

from __future__ import annotations

import numba
import numpy as np

from llmrt.gguf.constants import QK_K, GGMLType
from llmrt.gguf.quants._common import F32, f16, f32, nearest_int, seqsum, to_f16_bytes
from llmrt.gguf.quants.registry import dequantizer, quantizer

_SHIFT2 = np.array([0, 2, 4, 6], dtype=np.uint8)
_GROUP_MAX_EPS = F32(1e-15)

# -- dequantization ----------------------------------------------------------------------------


def _crumbs(q: np.ndarray) -> np.ndarray:
    """(n, 64) bytes -> (n, 2, 4, 32) of 2-bit values: half, shift, byte of the 32-byte half."""
    return (q.reshape(-1, 2, 1, 32) >> _SHIFT2.reshape(1, 1, 4, 1)) & 3


@dequantizer(GGMLType.Q2_K)
def dequant_q2_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sc = blocks[:, 0:16]
    d, dmin = f16(blocks, 80), f16(blocks, 82)
    dl = (d * (sc & 0xF).astype(F32)).reshape(n, 16, 1)
    ml = (dmin * (sc >> 4).astype(F32)).reshape(n, 16, 1)
    q = _crumbs(blocks[:, 16:80]).reshape(n, 16, 16).astype(F32)
    return (dl * q - ml).reshape(n, QK_K)


@dequantizer(GGMLType.Q3_K)
def dequant_q3_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    hmask, s = blocks[:, 0:32], blocks[:, 96:108]
    d = f16(blocks, 108)
    # 16 six-bit scales: low 4 bits in the nibbles of bytes 0..7, high 2 bits in bytes 8..11.
    lo = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=-1)
    hi = ((s[:, 8:12].reshape(n, 1, 4) >> _SHIFT2.reshape(1, 4, 1)) & 3).reshape(n, 16)
    scales = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).astype(F32)
    dl = (d * scales).reshape(n, 16, 1)
    low = _crumbs(blocks[:, 32:96]).astype(np.int8)
    # The high bit of element (half h, shift j) is bit 4h+j of hmask; a clear bit subtracts 4.
    bit = (hmask.reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)) & 1
    q = (low - ((bit ^ 1) << 2).astype(np.int8)).reshape(n, 16, 16).astype(F32)
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed into 12 bytes (ggml's get_scale_min_k4)."""
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([s0 & 63, (s2 & 0xF) | ((s0 >> 6) << 4)], axis=-1)
    m = np.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=-1)
    return sc, m


def _nibble_rows(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 8, 32): sub-block 2c is chunk c's low nibbles, 2c+1 its high ones."""
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, 8, 32)


@dequantizer(GGMLType.Q4_K)
def dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sc, m = _scale_min_k4(blocks[:, 4:16])
    d1 = (f16(blocks, 0) * sc.astype(F32)).reshape(n, 8, 1)
    m1 = (f16(blocks, 2) * m.astype(F32)).reshape(n, 8, 1)
    return (d1 * _nibble_rows(blocks[:, 16:144]).astype(F32) - m1).reshape(n, QK_K)


@dequantizer(GGMLType.Q5_K)
def dequant_q5_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sc, m = _scale_min_k4(blocks[:, 4:16])
    d1 = (f16(blocks, 0) * sc.astype(F32)).reshape(n, 8, 1)
    m1 = (f16(blocks, 2) * m.astype(F32)).reshape(n, 8, 1)
    qh = (blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = _nibble_rows(blocks[:, 48:176]) | (qh << 4)
    return (d1 * q.astype(F32) - m1).reshape(n, QK_K)


@dequantizer(GGMLType.Q6_K)
def dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 64)
    low = np.concatenate([ql & 0xF, ql >> 4], axis=-1)  # (n, 2, 128): quarters 0, 1, 2, 3
    high = _crumbs(blocks[:, 128:192]).reshape(n, 2, 128)
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(F32)
    sc = blocks[:, 192:208].view(np.int8).astype(F32)
    dl = (f16(blocks, 208) * sc).reshape(n, 16, 1)
    return (dl * q).reshape(n, QK_K)


@dequantizer(GGMLType.Q8_K)
def dequant_q8_k(blocks: np.ndarray) -> np.ndarray:
    return f32(blocks, 0) * blocks[:, 4:260].view(np.int8).astype(F32)


# -- quantization ------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _make_qkx2_rows(x, w, nmax, rmin, rdelta, nstep, use_mad, scale_out, min_out, levels_out):
    """ggml's make_qkx2_quants, one row of x at a time, in float32 with sums accumulated left to
    right (numba: the numpy form of this search was 90% of a Q4_K_M quantization's time). The
    error is weighted squared, or weighted absolute with use_mad (Q2_K)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    n = x.shape[1]
    laux = np.empty(n, np.int32)
    for r in range(x.shape[0]):
        xr, wr, levels = x[r], w[r], levels_out[r]
        sum_w, sum_x = zero, zero
        lo, hi = xr[0], xr[0]
        for j in range(n):
            sum_w += wr[j]
            sum_x += wr[j] * xr[j]
            lo = min(lo, xr[j])
            hi = max(hi, xr[j])
        lo = min(lo, zero)
        if hi == lo:
            scale_out[r], min_out[r] = zero, -lo
            levels[:] = 0
            continue
        iscale = np.float32(nmax) / (hi - lo)
        scale = one / iscale
        best = zero
        for j in range(n):
            levels[j] = min(max(np.int32(np.rint(iscale * (xr[j] - lo))), 0), nmax)
            diff = scale * np.float32(levels[j]) + lo - xr[j]
            best += wr[j] * (abs(diff) if use_mad else diff * diff)
        for step in range(nstep + 1):  # as ggml, each step from the best min found so far
            iscale = (rmin + rdelta * np.float32(step) + np.float32(nmax)) / (hi - lo)
            sum_l, sum_l2, sum_xl = zero, zero, zero
            for j in range(n):
                laux[j] = min(max(np.int32(np.rint(iscale * (xr[j] - lo))), 0), nmax)
                wl = wr[j] * np.float32(laux[j])
                sum_l += wl
                sum_l2 += wl * np.float32(laux[j])
                sum_xl += wl * xr[j]
            det = sum_w * sum_l2 - sum_l * sum_l
            if not det > zero:
                continue
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > zero:
                this_min = zero
                this_scale = sum_xl / sum_l2
            cur = zero
            for j in range(n):
                diff = this_scale * np.float32(laux[j]) + this_min - xr[j]
                cur += wr[j] * (abs(diff) if use_mad else diff * diff)
            if cur < best:
                levels[:] = laux
                best, scale, lo = cur, this_scale, this_min
        scale_out[r], min_out[r] = scale, -lo


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
    use_mad: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """ggml's make_qkx2_quants for each row of x: (scale, -min, levels) minimizing w-weighted
    squared error of scale * L + min, searching nstep + 1 candidate scales."""
    rows = x.shape[0]
    scale, neg_min = np.empty(rows, F32), np.empty(rows, F32)
    levels = np.empty(x.shape, np.int32)
    _make_qkx2_rows(np.ascontiguousarray(x, F32), np.ascontiguousarray(w, F32), nmax, F32(rmin),
                    F32(rdelta), nstep, use_mad, scale, neg_min, levels)  # fmt: skip
    return scale, neg_min, levels


def _quant_k_min(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple:
    """The shared part of Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)
    av_x = np.sqrt(seqsum(xs * xs) / F32(32))
    w = av_x[:, None] + np.abs(xs)
    scales, mins, levels = _make_qkx2(xs, w, nmax, rmin, 0.1, nstep)
    scales, mins, levels = scales.reshape(nb, 8), mins.reshape(nb, 8), levels.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(axis=-1, keepdims=True), F32(0))
    max_min = np.maximum(mins.max(axis=-1, keepdims=True), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
    packed = np.concatenate(
        [
            ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6),
            lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6),
            (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4),
        ],
        axis=-1,
    )
    d_bytes, dmin_bytes = to_f16_bytes(max_scale / F32(63)), to_f16_bytes(max_min / F32(63))
    sc, m = _scale_min_k4(packed)
    d = d_bytes.view("<f2").astype(F32) * sc.astype(F32)
    dm = dmin_bytes.view("<f2").astype(F32) * m.astype(F32)
    x3 = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((x3 + dm[..., None]) / d[..., None]), 0, nmax)
    levels = np.where((d != 0)[..., None], requant, levels).astype(np.uint8)
    return d_bytes, dmin_bytes, packed, levels


@quantizer(GGMLType.Q2_K)
def quant_q2_k(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q2_K_ref: 16 sub-blocks of 16 with 2-bit levels, 4-bit scales and
    mins, the search weighted by |x| on absolute error."""
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    scales, mins, levels = _make_qkx2(xs, np.abs(xs), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins, levels = scales.reshape(nb, 16), mins.reshape(nb, 16), levels.reshape(nb, 16, 16)
    q4 = F32(15)
    max_scale = np.maximum(scales.max(axis=-1, keepdims=True), F32(0))
    max_min = np.maximum(mins.max(axis=-1, keepdims=True), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale > 0, nearest_int((q4 / max_scale) * scales), 0)
        lm = np.where(max_min > 0, nearest_int((q4 / max_min) * mins), 0)
    sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
    d_bytes = to_f16_bytes(np.where(max_scale > 0, max_scale / q4, F32(0)).astype(F32))
    dmin_bytes = to_f16_bytes(np.where(max_min > 0, max_min / q4, F32(0)).astype(F32))
    d = d_bytes.view("<f2").astype(F32) * (sc & 0xF).astype(F32)
    dm = dmin_bytes.view("<f2").astype(F32) * (sc >> 4).astype(F32)
    x3 = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((x3 + dm[..., None]) / d[..., None]), 0, 3)
    levels = np.where((d != 0)[..., None], requant, levels).astype(np.uint8).reshape(nb, 2, 4, 32)
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 2) | (levels[:, :, 2] << 4)
          | (levels[:, :, 3] << 6)).reshape(nb, 64)  # fmt: skip
    return np.concatenate([sc, qs, d_bytes, dmin_bytes], axis=-1)


@numba.njit(cache=True, nogil=True)
def _make_q3(x, nmax, levels):
    """ggml's make_q3_quants with do_rmse: levels (L + nmax) and scale of one group of x."""
    zero = np.float32(0.0)
    n = x.shape[0]
    amax, vmax = signed_absmax(x)
    if amax < np.float32(1e-15):
        levels[:] = 0
        return zero
    sumlx, suml2 = _fit_signed(x, np.float32(-nmax) / vmax, nmax, levels)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * np.float32(levels[i])
            if slx > zero:
                sl2 = suml2 - w * np.float32(levels[i]) * np.float32(levels[i])
                new = min(max(np.int32(np.rint(x[i] * sl2 / slx)), -nmax), nmax - 1)
                if new != levels[i]:
                    slx += w * x[i] * np.float32(new)
                    sl2 += w * np.float32(new) * np.float32(new)
                    if sl2 > zero and slx * slx * suml2 > sumlx * sumlx * sl2:
                        levels[i], sumlx, suml2 = new, slx, sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        levels[i] += nmax
    return sumlx / suml2 if suml2 > zero else zero


@numba.njit(cache=True, nogil=True)
def _q3_k_scales(x, out, levels, d32):
    """First half of quantize_row_q3_K_ref per block: the groups' levels and scales, the scales
    in 6 bits (bytes 96..107) and the super-block scale as f32 (rounded to f16 by the caller)."""
    scales = np.empty(16, np.float32)
    for b in range(x.shape[0]):
        xb, block, lb = x[b], out[b], levels[b]
        block[:] = 0
        max_scale, amax = np.float32(0.0), np.float32(0.0)
        for j in range(16):
            scales[j] = _make_q3(xb[16 * j : 16 * j + 16], 4, lb[16 * j : 16 * j + 16])
            if abs(scales[j]) > amax:
                amax, max_scale = abs(scales[j]), scales[j]
        d32[b] = np.float32(0.0)
        if max_scale != 0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(16):
                q = min(max(np.int32(np.rint(iscale * scales[j])), -32), 31) + 32
                if j < 8:
                    block[96 + j] = q & 15
                else:
                    block[96 + j - 8] = np.int32(block[96 + j - 8]) | ((q & 15) << 4)
                shift = np.int32(2 * (j // 4))
                block[104 + j % 4] = np.int32(block[104 + j % 4]) | ((q >> 4) << shift)
            d32[b] = np.float32(1.0) / iscale


@numba.njit(cache=True, nogil=True)
def _q3_k_pack(x, out, levels, d_all):
    """Second half: levels again from the f16 scale, high bits into hmask, low bits into qs."""
    for b in range(x.shape[0]):
        xb, block, lb = x[b], out[b], levels[b]
        for j in range(16):
            # int32 throughout: numba would make a float of an int64 | uint64
            low = np.int32(block[96 + j]) & 15 if j < 8 else np.int32(block[96 + j - 8]) >> 4
            high = (np.int32(block[104 + j % 4]) >> np.int32(2 * (j // 4))) & 3
            sc = (low | (high << 4)) - 32
            d = d_all[b] * np.float32(sc)
            if d == 0:
                continue
            for i in range(16):
                lb[16 * j + i] = min(max(np.int32(np.rint(xb[16 * j + i] / d)), -4), 3) + 4
        for j in range(256):  # the high bit of level j: bit j // 32 of hmask[j % 32]
            if lb[j] > 3:
                block[j % 32] = np.int32(block[j % 32]) | (np.int32(1) << np.int32(j // 32))
                lb[j] -= 4
        for half in range(2):
            for i in range(32):
                at = 128 * half + i
                low = lb[at] | (lb[at + 32] << 2) | (lb[at + 64] << 4) | (lb[at + 96] << 6)
                block[32 + 32 * half + i] = low


@quantizer(GGMLType.Q3_K)
def quant_q3_k(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q3_K_ref: 16 groups of 16 with 3-bit levels and 6-bit scales
    (hmask[32], qs[64], scales[12], d)."""
    blocks = np.ascontiguousarray(x.reshape(-1, QK_K), F32)
    n = blocks.shape[0]
    out, levels, d32 = np.empty((n, 110), np.uint8), np.empty((n, QK_K), np.int32), np.empty(n, F32)
    _q3_k_scales(blocks, out, levels, d32)
    out[:, 108:110] = to_f16_bytes(d32)
    _q3_k_pack(blocks, out, levels, out[:, 108:110].copy().view("<f2")[:, 0].astype(F32))
    return out


@quantizer(GGMLType.Q4_K)
def quant_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, packed, levels = _quant_k_min(x, 15, -1.0, 20)
    pairs = levels.reshape(-1, 4, 2, 32)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, packed, qs], axis=-1)


@quantizer(GGMLType.Q5_K)
def quant_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, packed, levels = _quant_k_min(x, 31, -0.5, 15)
    high = (levels >> 4).astype(np.uint8)  # (nb, 8, 32): bit s of qh[l] is sub-block s's
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    pairs = (levels & 0xF).reshape(-1, 4, 2, 32)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, packed, qh, qs], axis=-1)


@numba.njit(cache=True, nogil=True, inline="always")
def signed_absmax(x):
    """The largest magnitude in x and the signed value that has it (the first, on ties)."""
    amax, vmax = np.float32(0.0), np.float32(0.0)
    for i in range(x.shape[0]):
        if abs(x[i]) > amax:
            amax, vmax = abs(x[i]), x[i]
    return amax, vmax


@numba.njit(cache=True, nogil=True, inline="always")
def _fit_signed(x, iscale, nmax, levels):
    """Levels round(iscale · x) in [-nmax, nmax), and the x²-weighted sums Σw·x·l and Σw·l²."""
    sumlx, suml2 = np.float32(0.0), np.float32(0.0)
    for i in range(x.shape[0]):
        levels[i] = min(max(np.int32(np.rint(iscale * x[i])), -nmax), nmax - 1)
        w = x[i] * x[i]
        sumlx += w * x[i] * np.float32(levels[i])
        suml2 += w * np.float32(levels[i]) * np.float32(levels[i])
    return sumlx, suml2


@numba.njit(cache=True, nogil=True)
def _make_qx_rows(x, nmax, scale_out, levels_out):
    """ggml's make_qx_quants with rmse_type 1 (weights x²), one row at a time in float32."""
    zero = np.float32(0.0)
    n = x.shape[1]
    lv = np.empty(n, np.int32)
    for r in range(x.shape[0]):
        xr, levels = x[r], levels_out[r]
        amax, vmax = signed_absmax(xr)
        if amax < np.float32(1e-15):
            scale_out[r] = zero
            levels[:] = 0
            continue
        scale, best = zero, zero
        for step in range(-10, 10):  # -10 stands for the first trial, at iscale -nmax / vmax
            if step == 0:
                continue
            if step == -10:
                iscale = np.float32(-nmax) / vmax
            else:
                iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / vmax
            sumlx, suml2 = _fit_signed(xr, iscale, nmax, lv)
            if step == -10:
                scale = sumlx / suml2 if suml2 != zero else zero
            elif suml2 > zero and sumlx * sumlx > best * suml2:
                scale = sumlx / suml2
            else:
                continue
            best = scale * sumlx
            for j in range(n):
                levels[j] = lv[j] + nmax
        scale_out[r] = scale


def _make_qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1 (weights x^2) for each row: (scale, L + nmax)."""
    scale, levels = np.empty(x.shape[0], F32), np.empty(x.shape, np.int32)
    _make_qx_rows(np.ascontiguousarray(x, F32), nmax, scale, levels)
    return scale, levels


@quantizer(GGMLType.Q6_K)
def quant_q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scales, levels = _make_qx(x.reshape(nb * 16, 16), 32)
        scales, levels = scales.reshape(nb, 16), levels.reshape(nb, 16, 16)
        i = np.abs(scales).argmax(axis=-1)[:, None]
        max_scale = np.take_along_axis(scales, i, axis=-1)  # (nb, 1), sign kept
        empty = np.abs(max_scale) < _GROUP_MAX_EPS
        iscale = F32(-128) / np.where(empty, F32(1), max_scale)
        d_bytes = to_f16_bytes(F32(1) / iscale)
        sc = np.minimum(nearest_int(iscale * scales), 127).astype(np.int8)
        d = d_bytes.view("<f2").astype(F32) * sc.astype(F32)  # (nb, 16)
        requant = np.clip(nearest_int(x.reshape(nb, 16, 16) / d[..., None]), -32, 31) + 32
    levels = np.where((d != 0)[..., None], requant, levels).astype(np.uint8)
    q = levels.reshape(nb, 2, 4, 32)  # half, quarter, element
    lo = q & 0xF
    ql = np.concatenate(
        [lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=-1
    )
    ql = ql.reshape(nb, 128)
    qh = np.bitwise_or.reduce((q >> 4) << _SHIFT2.reshape(1, 1, 4, 1), axis=2).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=-1)
    out[empty[:, 0]] = 0
    return out


@quantizer(GGMLType.Q8_K)
def quant_q8_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    i = np.abs(x).argmax(axis=-1)[:, None]
    vmax = np.take_along_axis(x, i, axis=-1)
    zero = vmax == 0
    iscale = F32(-127) / np.where(zero, F32(1), vmax)
    q = np.minimum(nearest_int(iscale * x), 127)
    q = np.where(zero, 0, q).astype(np.int8)
    d = np.where(zero, F32(0), F32(1) / iscale).astype("<f4")
    bsums = q.reshape(nb, 16, 16).astype(np.int16).sum(axis=-1).astype("<i2")
    return np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=-1)
