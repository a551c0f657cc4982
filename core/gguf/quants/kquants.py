"""K-quants: 256-element super-blocks of 16 or 8 sub-blocks with quantized scales (Q2_K..Q8_K).

Dequantization of every K type, and quantization to Q4_K, Q5_K, Q6_K and Q8_K following ggml's
reference quantizers (quantize_row_q*_K_ref with make_qkx2_quants / make_qx_quants) step by step
in float32, with sums accumulated left to right as its C loops do. The `gguf` package has no K
quantizers to compare with, so these are tested against error bounds.
"""

from __future__ import annotations

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


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants for each row of x: (scale, -min, levels) minimizing w-weighted
    squared error of scale * L + min, searching nstep + 1 candidate scales."""
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
    lo = np.minimum(x.min(axis=-1), F32(0))
    hi = x.max(axis=-1)
    flat = hi == lo
    span = np.where(flat, F32(1), hi - lo)
    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    levels = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    diff = scale[:, None] * levels.astype(F32) + lo[:, None] - x
    best = seqsum(w * (diff * diff))
    for step in range(nstep + 1):
        num = F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)
        iscale = num / np.where(flat, F32(1), hi - lo)
        laux = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
        lf = laux.astype(F32)
        wl = w * lf
        sum_l, sum_l2, sum_xl = seqsum(wl), seqsum(wl * lf), seqsum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = (det > 0) & ~flat
        safe_det = np.where(ok, det, F32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_det
        positive = this_min > 0
        this_min = np.where(positive, F32(0), this_min)
        this_scale = np.where(positive, sum_xl / np.where(ok, sum_l2, F32(1)), this_scale)
        diff = this_scale[:, None] * lf + this_min[:, None] - x
        cur = seqsum(w * (diff * diff))
        better = ok & (cur < best)
        levels = np.where(better[:, None], laux, levels)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)
    scale = np.where(flat, F32(0), scale)
    levels = np.where(flat[:, None], 0, levels)
    return scale.astype(F32), (-lo).astype(F32), levels


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


def _make_qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1 (weights x^2) for each row: (scale, L + nmax)."""
    ax = np.abs(x)
    i = ax.argmax(axis=-1)[:, None]
    amax = np.take_along_axis(ax, i, axis=-1)[:, 0]
    vmax = np.take_along_axis(x, i, axis=-1)[:, 0]
    zero = amax < _GROUP_MAX_EPS
    vmax = np.where(zero, F32(1), vmax)
    w = x * x

    def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, seqsum(w * x * lf), seqsum(w * lf * lf)

    lv, sumlx, suml2 = trial(F32(-nmax) / vmax)
    levels = lv + nmax
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lv, sumlx, suml2 = trial(-(F32(nmax) + F32(0.1) * F32(step)) / vmax)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        levels = np.where(better[:, None], lv + nmax, levels)
        scale = np.where(better, sumlx / np.where(better, suml2, F32(1)), scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, F32(0), scale).astype(F32)
    levels = np.where(zero[:, None], 0, levels)
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
