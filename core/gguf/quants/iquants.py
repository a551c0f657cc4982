"""IQ types (importance-matrix quants): lattice codebooks with sign patterns, and the non-linear
4-bit IQ4_NL / IQ4_XS. Dequantization of each; quantization to IQ4_NL only, as llama-quantize
does it without an importance matrix (the lattice types need one).

The codebook grids (iq2xxs_grid, iq2xs_grid, iq2s_grid, iq3xxs_grid, iq3s_grid, iq1s_grid in
ggml-common.h) are thousands of constants found by a lattice search; they define the formats and
cannot be derived from a rule. Rather than carry a copy, we read them at run time from the
installed `gguf` package (its `quants` module holds them, hex-packed) and decode them ourselves;
`gguf` is imported only when an IQ grid type is first dequantized.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from llmrt.errors import LlmrtError
from llmrt.gguf.constants import QK_K, GGMLType
from llmrt.gguf.quants._common import F32, bits_le, f16, nibbles, u16, u32
from llmrt.gguf.quants.kquants import signed_absmax
from llmrt.gguf.quants.registry import dequantizer, quantizer

# ggml's kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS.
IQ4_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=F32
)
IQ1_DELTA = F32(0.125)  # IQ1S_DELTA

# ksigns_iq2xs: 7 sign bits plus an 8th that makes the count of set bits even.
_KSIGNS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)
# Each sign pattern expanded to 8 factors of +1 / -1.
_SIGN_FACTORS = np.where(bits_le(_KSIGNS.reshape(128, 1)) != 0, F32(-1), F32(1))


@functools.cache
def grid(t: GGMLType) -> np.ndarray:
    """The codebook of `t` as float32 (entries, 8 or 4), decoded from the `gguf` package."""
    try:
        from gguf import quants as gq
    except ImportError:
        raise LlmrtError(
            f"dequantizing {t.name} needs the codebook grids of the `gguf` package: "
            "pip install gguf"
        ) from None
    holder = getattr(gq, t.name)
    levels = np.asarray(holder.grid_map, dtype=F32)
    rows, cols = holder.grid_shape
    packed = np.frombuffer(bytes.fromhex(holder.grid_hex.decode("ascii")), dtype=np.uint8)
    nbits = max(1, int(len(levels) - 1).bit_length())  # bits per index into `levels`
    per_byte = 8 // nbits
    # 3-bit indices are stored one per nibble: each takes 8 // per_byte bits.
    shifts = np.arange(0, 8, 8 // per_byte, dtype=np.uint8)
    idx = (packed.reshape(-1, 1) >> shifts.reshape(1, -1)) & ((1 << nbits) - 1)
    return levels[idx.reshape(rows, cols)]


def _signed(db: np.ndarray, values: np.ndarray, signs: np.ndarray) -> np.ndarray:
    # ggml computes db * grid[j] * sign, left to right.
    return (db * values * signs).reshape(values.shape[0], QK_K)


@dequantizer(GGMLType.IQ2_XXS)
def dequant_iq2_xxs(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    aux = u32(blocks, 2, 16).reshape(n, 8, 2)  # per 32 elements: 4 grid indices, signs + scale
    db = f16(blocks, 0) * (F32(0.5) + (aux[..., 1] >> 28).astype(F32))
    db = (db * F32(0.25)).reshape(n, 8, 1, 1)
    idx = blocks[:, 2:66].reshape(n, 8, 8)[:, :, 0:4]  # the bytes of aux[..., 0]
    values = grid(GGMLType.IQ2_XXS)[idx]  # (n, 8, 4, 8)
    sidx = (aux[..., 1:2] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127
    return _signed(db, values, _SIGN_FACTORS[sidx])


def _half_scales(d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d * (0.5 + nibble) * 0.25 for the two nibbles of each scale byte: (n, 16)."""
    nib = np.stack([s & 0xF, s >> 4], axis=-1).reshape(s.shape[0], -1).astype(F32)
    return d * (F32(0.5) + nib) * F32(0.25)


@dequantizer(GGMLType.IQ2_XS)
def dequant_iq2_xs(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    q = u16(blocks, 2, 32).reshape(n, 8, 4)
    db = _half_scales(f16(blocks, 0), blocks[:, 66:74]).reshape(n, 8, 2, 1, 1)
    values = grid(GGMLType.IQ2_XS)[q & 511].reshape(n, 8, 2, 2, 8)
    signs = _SIGN_FACTORS[q >> 9].reshape(n, 8, 2, 2, 8)
    return _signed(db, values, signs)


@dequantizer(GGMLType.IQ2_S)
def dequant_iq2_s(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    qs, sign_bytes, qh = blocks[:, 2:34], blocks[:, 34:66], blocks[:, 66:74]
    db = _half_scales(f16(blocks, 0), blocks[:, 74:82]).reshape(n, 8, 2, 1, 1)
    high = (qh.reshape(n, 8, 1) >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # (n, 8, 4)
    idx = qs.reshape(n, 8, 4).astype(np.uint16) | (high.astype(np.uint16) << 8)
    values = grid(GGMLType.IQ2_S)[idx].reshape(n, 8, 2, 2, 8)
    signs = np.where(bits_le(sign_bytes) != 0, F32(-1), F32(1)).reshape(n, 8, 2, 2, 8)
    return _signed(db, values, signs)


@dequantizer(GGMLType.IQ3_XXS)
def dequant_iq3_xxs(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    aux = u32(blocks, 66, 8)  # (n, 8): 4 x 7 sign bits and a 4-bit scale per 32 elements
    db = f16(blocks, 0) * (F32(0.5) + (aux >> 28).astype(F32))
    db = (db * F32(0.5)).reshape(n, 8, 1, 1)
    values = grid(GGMLType.IQ3_XXS)[blocks[:, 2:66]].reshape(n, 8, 4, 8)
    sidx = (aux[..., None] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127
    return _signed(db, values, _SIGN_FACTORS[sidx])


@dequantizer(GGMLType.IQ3_S)
def dequant_iq3_s(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    qs, qh, sign_bytes, s = blocks[:, 2:66], blocks[:, 66:74], blocks[:, 74:106], blocks[:, 106:110]
    odd = np.stack([s & 0xF, s >> 4], axis=-1).reshape(n, 8)
    db = (f16(blocks, 0) * (1 + 2 * odd).astype(F32)).reshape(n, 8, 1, 1)
    idx = qs.astype(np.uint16) | (bits_le(qh).astype(np.uint16) << 8)  # (n, 64)
    values = grid(GGMLType.IQ3_S)[idx].reshape(n, 8, 4, 8)
    signs = np.where(bits_le(sign_bytes) != 0, F32(-1), F32(1)).reshape(n, 8, 4, 8)
    return _signed(db, values, signs)


@dequantizer(GGMLType.IQ1_S)
def dequant_iq1_s(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    qs, qh = blocks[:, 2:34].reshape(n, 8, 4), u16(blocks, 34, 8)
    dl = (f16(blocks, 0) * (2 * ((qh >> 12) & 7) + 1).astype(F32)).reshape(n, 8, 1, 1)
    delta = np.where(qh & 0x8000, -IQ1_DELTA, IQ1_DELTA).astype(F32).reshape(n, 8, 1, 1)
    high = (qh[..., None] >> np.array([0, 3, 6, 9], dtype=np.uint16)) & 7
    values = grid(GGMLType.IQ1_S)[qs.astype(np.uint16) | (high << 8)]  # (n, 8, 4, 8)
    return (dl * (values + delta)).reshape(n, QK_K)


@dequantizer(GGMLType.IQ1_M)
def dequant_iq1_m(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    qs, qh, sc = blocks[:, 0:32].reshape(n, 8, 4), blocks[:, 32:48], u16(blocks, 48, 4)
    # The f16 super-block scale is spread over the top nibbles of the four u16 scale words.
    bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0xF0)
    bits |= ((sc[:, 2] >> 4) & 0xF00) | (sc[:, 3] & 0xF000)
    d = bits.astype("<u2").view("<f2").astype(F32).reshape(n, 1)
    sub = (sc[..., None] >> np.array([0, 3, 6, 9], dtype=np.uint16)) & 7  # (n, 4, 4)
    dl = (d * (2 * sub.reshape(n, 16) + 1).astype(F32)).reshape(n, 8, 2, 1, 1)
    nib = np.stack([qh & 0xF, qh >> 4], axis=-1).reshape(n, 8, 4)  # a 3-bit index high + sign
    idx = qs.astype(np.uint16) | ((nib & 7).astype(np.uint16) << 8)
    delta = np.where(nib & 8, -IQ1_DELTA, IQ1_DELTA).astype(F32).reshape(n, 8, 2, 2, 1)
    values = grid(GGMLType.IQ1_M)[idx].reshape(n, 8, 2, 2, 8)
    return (dl * (values + delta)).reshape(n, QK_K)


@dequantizer(GGMLType.IQ4_NL)
def dequant_iq4_nl(blocks: np.ndarray) -> np.ndarray:
    return f16(blocks, 0) * IQ4_LEVELS[nibbles(blocks[:, 2:18])]


@numba.njit(cache=True, nogil=True)
def _best_level(levels, v):
    """ggml's best_index_int8: the index of the level nearest v (the lower one on a tie)."""
    if v <= levels[0]:
        return 0
    if v >= levels[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v < levels[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if v - levels[hi - 1] < levels[hi] - v else hi


@numba.njit(cache=True, nogil=True)
def _iq4_nl_blocks(x, levels, scale_out, index_out):
    """ggml's quantize_iq4_nl without an importance matrix, block by block: the scale that best
    fits x² -weighted, searched over 15 trial scales, and each value's level under it."""
    zero = np.float32(0.0)
    for b in range(x.shape[0]):
        xb = x[b]
        amax, vmax = signed_absmax(xb)
        d = zero
        if amax >= np.float32(1e-15):
            for trial in range(-8, 8):  # -8: the first fit, from the largest value alone
                if trial == -8:
                    inv = np.float32(1.0) / (-vmax / levels[0])
                else:
                    inv = (np.float32(trial) + levels[0]) / vmax
                sumqx, sumq2 = zero, zero
                for j in range(32):
                    q = levels[_best_level(levels, inv * xb[j])]
                    w = xb[j] * xb[j]
                    sumqx += w * q * xb[j]
                    sumq2 += w * q * q
                if trial == -8:
                    d = sumqx / sumq2 if sumq2 > zero else zero
                    best = d * sumqx
                elif sumq2 > zero and sumqx * sumqx > best * sumq2:
                    d = sumqx / sumq2
                    best = d * sumqx
        scale_out[b] = d
        inv = np.float32(1.0) / d if d != zero else zero
        for j in range(32):
            index_out[b, j] = _best_level(levels, inv * xb[j])


@quantizer(GGMLType.IQ4_NL)
def quant_iq4_nl(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_iq4_nl with no importance matrix: an f16 scale and 32 4-bit indices into
    the non-linear levels (IQ4_LEVELS) a block."""
    blocks = np.ascontiguousarray(x.reshape(-1, 32), F32)
    n = blocks.shape[0]
    scale, index = np.empty(n, F32), np.empty((n, 32), np.uint8)
    _iq4_nl_blocks(blocks, IQ4_LEVELS, scale, index)
    qs = index[:, :16] | (index[:, 16:] << 4)
    return np.concatenate([scale.astype("<f2").view(np.uint8).reshape(n, 2), qs], axis=-1)


@dequantizer(GGMLType.IQ4_XS)
def dequant_iq4_xs(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sh = u16(blocks, 2, 1)  # (n, 1): high 2 bits of the 8 scales
    sl = blocks[:, 4:8]
    low = np.stack([sl & 0xF, sl >> 4], axis=-1).reshape(n, 8)
    high = ((sh >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)
    ls = (low | (high << 4)).astype(np.int16) - 32
    dl = (f16(blocks, 0) * ls.astype(F32)).reshape(n, 8, 1)
    q = nibbles(blocks[:, 8:136].reshape(n * 8, 16)).reshape(n, 8, 32)
    return (dl * IQ4_LEVELS[q]).reshape(n, QK_K)
