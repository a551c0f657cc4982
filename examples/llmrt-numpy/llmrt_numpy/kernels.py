"""One numpy function per op: ``KERNELS[op](node, *sources) -> value``.

Written from llmrt's docs (docs/plugins/ops.md for what each op computes, numerics.md for the
roundings llama.cpp makes): activations are float32 arrays, a weight is a ``Weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmrt.gguf import GGMLType
from llmrt.ir import ROPE_NEOX, Op, Tensor
from llmrt.reference import vec_dot_round

F32 = np.float32
ROW_BY_ROW = 32  # products of up to this many rows go one row at a time (numerics.md)


@dataclass(frozen=True)
class Weight:
    """A weight dequantized to float32 at upload; `type` is its GGUF type, which decides how the
    activations multiplied with it are rounded."""

    values: np.ndarray
    type: GGMLType


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(F32)


def get_rows(node: Tensor, table, ids: np.ndarray) -> np.ndarray:
    values = table.values if isinstance(table, Weight) else table
    return np.asarray(values[ids], F32)


def set_rows(node: Tensor, dst: np.ndarray, ids: np.ndarray, src: np.ndarray) -> np.ndarray:
    dst[ids] = src  # in place, in the state's storage; numpy rounds to an f16 cache's type
    return dst


def view(node: Tensor, src: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(src).reshape(-1)
    strides = [s * flat.itemsize for s in node.strides]
    return np.lib.stride_tricks.as_strided(flat[node.params["offset"] :], node.shape, strides)


def _rows_times(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [n, K] times w [M, K] transposed: row by row for small n, so that a row's result does
    not depend on the rest of the batch."""
    if x.shape[0] > ROW_BY_ROW:
        return (x @ w.T).astype(F32, copy=False)
    out = np.empty((x.shape[0], w.shape[0]), F32)
    for i, row in enumerate(x):
        np.matmul(w, row, out=out[i])
    return out


def mul_mat(node: Tensor, a, b: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    if isinstance(a, Weight):
        k = a.values.shape[1]
        out = _rows_times(vec_dot_round(b.reshape(-1, k), a.type), a.values).reshape(node.shape)
    else:  # activations (a state): a [..., M, K] serves r consecutive batch entries of b
        if a.dtype == np.float16:
            b = _f16(b)
        a = np.asarray(a, F32)
        r = math.prod(b.shape[:-2]) // math.prod(a.shape[:-2])
        a4 = a.reshape(-1, 1, *a.shape[-2:])
        b4 = b.reshape(a4.shape[0], r, *b.shape[-2:])
        out = np.matmul(b4, np.swapaxes(a4, -1, -2)).reshape(node.shape)
    return out if residual is None else out + residual


def _weights(x):
    return x.values if isinstance(x, Weight) else x


def rms_norm(node: Tensor, x: np.ndarray) -> np.ndarray:
    mean_sq = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x / np.sqrt(mean_sq + node.params["eps"])).astype(F32)


def norm(node: Tensor, x: np.ndarray) -> np.ndarray:
    centered = x.astype(np.float64) - np.mean(x, axis=-1, dtype=np.float64, keepdims=True)
    var = np.mean(np.square(centered), axis=-1, keepdims=True)
    return (centered / np.sqrt(var + node.params["eps"])).astype(F32)


def rope(node: Tensor, x: np.ndarray, pos: np.ndarray, factors=None) -> np.ndarray:
    p = node.params
    n_dims = p["n_dims"]
    half = n_dims // 2
    freq = p["freq_base"] ** (-2.0 * np.arange(half) / n_dims)  # float64
    if factors is not None:
        freq = freq / np.asarray(_weights(factors), np.float64)
    theta = np.asarray(pos, np.float64)[:, None] * freq[None, :] * p["freq_scale"]
    cos = (np.cos(theta) * p["attn_factor"]).astype(F32)[:, None, :]  # [T, 1, half]
    sin = (np.sin(theta) * p["attn_factor"]).astype(F32)[:, None, :]
    first = np.s_[..., :half] if p["mode"] == ROPE_NEOX else np.s_[..., 0:n_dims:2]
    second = np.s_[..., half:n_dims] if p["mode"] == ROPE_NEOX else np.s_[..., 1:n_dims:2]
    out = np.array(x, F32)
    x0, x1 = x[first], x[second]
    out[first] = x0 * cos - x1 * sin
    out[second] = x0 * sin + x1 * cos
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def soft_max(node: Tensor, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = x * F32(node.params["scale"])
    return _softmax(z if mask is None else z + mask).astype(F32)


def silu(x: np.ndarray) -> np.ndarray:
    return (x / (1.0 + np.exp(-x))).astype(F32)


def gelu(x: np.ndarray) -> np.ndarray:
    """ggml's GELU table: looked up by x's f16 value, holding f16 results; exact past ±10."""
    h = _f16(x)
    y = _f16(
        0.5 * h * (1.0 + np.tanh(F32(math.sqrt(2 / math.pi)) * h * (1.0 + F32(0.044715) * h * h)))
    )
    return np.where(x <= -10.0, F32(0.0), np.where(x >= 10.0, x, y)).astype(F32)


def flash_attn_ext(node: Tensor, q, k, v, mask=None) -> np.ndarray:
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    if k.dtype == np.float16:  # an f16 cache multiplies with f16-rounded operands
        q = _f16(q)
    qg = q.reshape(t, hkv, hq // hkv, d)  # query head h reads kv head h // (hq / hkv)
    scores = np.einsum("thgd,shd->hgts", qg, k.astype(F32)) * F32(node.params["scale"])
    if node.params["softcap"]:
        cap = F32(node.params["softcap"])
        scores = np.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores + mask
    probs = _softmax(scores)
    if v.dtype == np.float16:
        probs = _f16(probs)
    out = np.einsum("hgts,shd->thgd", probs, v.astype(F32))
    return out.reshape(t, hq, dv).astype(F32)


def _binary(fn: Callable) -> Callable:
    return lambda node, a, b: fn(_weights(a), _weights(b)).astype(F32, copy=False)


KERNELS: dict[Op, Callable[..., np.ndarray]] = {
    Op.GET_ROWS: get_rows,
    Op.SET_ROWS: set_rows,
    Op.VIEW: view,
    Op.RESHAPE: lambda node, x: np.reshape(x, node.shape),
    Op.PERMUTE: lambda node, x: np.transpose(x, node.params["axes"]),
    Op.CONT: lambda node, x: np.ascontiguousarray(x),
    Op.CPY: lambda node, x: np.asarray(x, np.float16 if node.dtype == GGMLType.F16 else F32),
    Op.MUL_MAT: mul_mat,
    Op.ADD: _binary(np.add),
    Op.MUL: _binary(np.multiply),
    Op.SCALE: lambda node, x: (_weights(x) * F32(node.params["scale"])).astype(F32),
    Op.RMS_NORM: rms_norm,
    Op.NORM: norm,
    Op.ROPE: rope,
    Op.SOFT_MAX: soft_max,
    Op.SILU: lambda node, x: silu(x),
    Op.GELU: lambda node, x: gelu(x),
    Op.SWIGLU: lambda node, gate, up: silu(gate) * up,
    Op.GEGLU: lambda node, gate, up: gelu(gate) * up,
    Op.FLASH_ATTN_EXT: flash_attn_ext,
    Op.ARGMAX: lambda node, x: np.argmax(x, axis=-1).astype(np.int32),
}
