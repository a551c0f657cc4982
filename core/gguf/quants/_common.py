"""Small helpers shared by the block codecs: field views, nibble and bit unpacking, rounding.

A codec works on a 2-D uint8 array of whole blocks, shape (n_blocks, type_size), and returns
(n_blocks, block_size) float32 (or the reverse). The arithmetic follows ggml's reference C code
operation by operation, in float32, so that results are bit-exact with it.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The little-endian f16 at byte `at` of each block, as float32 of shape (n, 1)."""
    return blocks[:, at : at + 2].view("<f2").astype(F32)


def f32(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[:, at : at + 4].view("<f4").astype(F32)


def u16(blocks: np.ndarray, at: int, count: int) -> np.ndarray:
    return blocks[:, at : at + 2 * count].view("<u2")


def u32(blocks: np.ndarray, at: int, count: int) -> np.ndarray:
    return blocks[:, at : at + 4 * count].view("<u4")


def nibbles(q: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k): the k low nibbles, then the k high nibbles (ggml's order)."""
    return np.concatenate([q & 0x0F, q >> 4], axis=-1)


def bits_le(q: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 8k) of 0/1, bit 0 of byte 0 first."""
    return np.unpackbits(q, axis=-1, bitorder="little")


def round_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves go away from zero (np.rint would round them to even).

    floor(|x| + 0.5) would be wrong just below a half (0.49999997 + 0.5 rounds up to 1 in float32);
    the fraction |x| - floor(|x|) is exact, so compare it instead.
    """
    a = np.abs(x)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(F32(2) * (a - fl)), x).astype(F32)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (its float magic-number trick), as int32."""
    return np.rint(x).astype(np.int32)


def safe_inverse(d: np.ndarray) -> np.ndarray:
    """1/d where d != 0, else 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def to_f16_bytes(d: np.ndarray) -> np.ndarray:
    """float32 (n, 1) -> its f16 as (n, 2) bytes."""
    return d.astype("<f2").view(np.uint8).reshape(-1, 2)


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right in float32, the way a C loop accumulates."""
    s = np.zeros(a.shape[:-1], dtype=F32)
    for i in range(a.shape[-1]):
        s += a[..., i]
    return s
