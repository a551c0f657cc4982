"""The tables of block codecs, filled by the codec modules through two decorators."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmrt.gguf.constants import GGMLType

# (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32
Dequantizer = Callable[[np.ndarray], np.ndarray]
# (n_blocks, block_size) float32 -> (n_blocks, type_size) uint8
Quantizer = Callable[[np.ndarray], np.ndarray]

DEQUANTIZERS: dict[GGMLType, Dequantizer] = {}
QUANTIZERS: dict[GGMLType, Quantizer] = {}


def dequantizer(t: GGMLType) -> Callable[[Dequantizer], Dequantizer]:
    def register(fn: Dequantizer) -> Dequantizer:
        assert t not in DEQUANTIZERS, t
        DEQUANTIZERS[t] = fn
        return fn

    return register


def quantizer(t: GGMLType) -> Callable[[Quantizer], Quantizer]:
    def register(fn: Quantizer) -> Quantizer:
        assert t not in QUANTIZERS, t
        QUANTIZERS[t] = fn
        return fn

    return register
