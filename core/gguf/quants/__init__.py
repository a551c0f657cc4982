"""Reference (de)quantization of ggml's block types in vectorized numpy.

`dequantize` turns raw blocks into float32, bit-exact with ggml's dequantize_row_* (and with
`gguf.quants`); `quantize` turns float32 into raw blocks. Both work on any run of whole rows, so a
caller can convert rows 5..9 of a tensor (`TensorInfo.rows(5, 10)`) without touching the rest.
Work is done in chunks of blocks so temporaries stay small (and in cache) for large tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmrt.gguf.constants import GGMLType
from llmrt.gguf.quants import iquants, kquants, legacy, lowbit  # noqa: F401  (they register)
from llmrt.gguf.quants.registry import DEQUANTIZERS, QUANTIZERS

__all__ = ["dequantize", "quantize", "can_quantize", "DEQUANTIZERS", "QUANTIZERS"]

CHUNK_ELEMENTS = 1 << 16  # elements dequantized per step; ~256 KiB of float32 output
# Quantizers loop over the elements of a block (to sum in C's order), so they amortize numpy's
# per-call overhead over more blocks.
QUANT_CHUNK_ELEMENTS = 1 << 20


def _as_bytes(data: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def dequantize(
    data: np.ndarray | bytes | bytearray | memoryview, type: GGMLType | int, shape: Sequence[int]
) -> np.ndarray:
    """Raw blocks of `type` -> a new float32 array of `shape` (numpy order, innermost last).

    `data` is uint8 (any shape; only its bytes count) or an array of the type's own dtype (such
    as float16 for F16); it must hold exactly the bytes of `shape`. Raises ValueError otherwise.
    """
    t = GGMLType(type)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    row = shape[-1] if shape else 1
    if row % t.block_size:
        raise ValueError(f"rows of {row} are not whole {t.name} blocks of {t.block_size}")
    raw = _as_bytes(data)
    nblocks = n // t.block_size
    if raw.size != nblocks * t.type_size:
        raise ValueError(
            f"{t.name} data of shape {shape} need {nblocks * t.type_size} bytes, got {raw.size}"
        )
    fn = DEQUANTIZERS[t]
    blocks = raw.reshape(nblocks, t.type_size)
    out = np.empty((nblocks, t.block_size), dtype=np.float32)
    step = max(1, CHUNK_ELEMENTS // t.block_size)
    with np.errstate(all="ignore"):  # garbage blocks may hold NaN/inf scales; that is their data
        for i in range(0, nblocks, step):
            out[i : i + step] = fn(blocks[i : i + step])
    return out.reshape(shape)


def can_quantize(type: GGMLType | int) -> bool:
    return GGMLType(type) in QUANTIZERS


def quantize(x: np.ndarray, type: GGMLType | int) -> np.ndarray:
    """float32 values -> raw blocks of `type` as uint8 of shape (*x.shape[:-1], row bytes).

    The last dimension must be a multiple of the block size. Supported types: `QUANTIZERS`.
    """
    t = GGMLType(type)
    fn = QUANTIZERS.get(t)
    if fn is None:
        raise ValueError(f"quantizing to {t.name} is not supported")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        x = x.reshape(1)
    if x.shape[-1] % t.block_size:
        raise ValueError(f"rows of {x.shape[-1]} are not whole {t.name} blocks of {t.block_size}")
    blocks = x.reshape(-1, t.block_size)
    out = np.empty((blocks.shape[0], t.type_size), dtype=np.uint8)
    step = max(1, QUANT_CHUNK_ELEMENTS // t.block_size)
    with np.errstate(all="ignore"):
        for i in range(0, blocks.shape[0], step):
            out[i : i + step] = fn(blocks[i : i + step])
    return out.reshape(*x.shape[:-1], x.shape[-1] // t.block_size * t.type_size)
