"""The numpy reference: a kernel per op, simple and correct, the oracle every backend is checked
against (the cpu backend runs it as it is).

Each kernel takes the node and its sources' values and returns the node's value. Activations are
float32 numpy arrays; a quantized weight stays quantized (`QuantizedWeight`) and is dequantized a
block of rows at a time, never whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrt.device import HostBuffer
from llmrt.errors import LlmrtError, UnsupportedOp
from llmrt.gguf import dequantize
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Op, Tensor

# Rows dequantized per step of a quantized mul_mat: bounds the f32 scratch to about 4 MiB.
SCRATCH_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class QuantizedWeight:
    """A 2-D weight kept in its ggml blocks: `raw` is uint8 [rows, row_nbytes]."""

    raw: np.ndarray
    type: GGMLType
    shape: tuple[int, int]

    def dequantize_rows(self, start: int, stop: int) -> np.ndarray:
        return dequantize(self.raw[start:stop], self.type, (stop - start, self.shape[1]))


def _rows_per_step(k: int) -> int:
    return max(1, SCRATCH_ELEMENTS // max(k, 1))


# ggml multiplies a weight of each type with activations converted to a "vec_dot type": the CPU
# backend (and llama.cpp's CUDA kernels) quantize activations to 8 bits in blocks. The reference
# does the same rounding, so that it computes what llama.cpp computes, not a more exact variant.
_Q8_0_FAMILY = {"Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "Q4_1", "Q5_1", "MXFP4"}


def _round_q8_0(x: np.ndarray) -> np.ndarray:
    """Blocks of 32 to int8 with an f16 scale, as ggml's quantize_row_q8_0/q8_1 (x86 SIMD path:
    scale 127/amax, round half to even)."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)  # -1 fails on 0 rows
    amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv)
    d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    return (q * d).reshape(x.shape).astype(np.float32)


def _round_q8_k(x: np.ndarray) -> np.ndarray:
    """Blocks of 256 to int8 with an f32 scale, as ggml's quantize_row_q8_K: the element of
    largest magnitude maps to -127 exactly."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 256, 256)
    idx = np.argmax(np.abs(blocks), axis=-1)[..., None]
    peak = np.take_along_axis(blocks, idx, axis=-1)
    with np.errstate(divide="ignore"):
        iscale = np.where(peak != 0, np.float32(-127.0) / peak, np.float32(0.0)).astype(np.float32)
    q = np.minimum(np.rint(blocks * iscale), 127)
    d = np.where(iscale != 0, np.float32(1.0) / np.where(iscale != 0, iscale, 1), 0)
    return (q * d.astype(np.float32)).reshape(x.shape).astype(np.float32)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def vec_dot_round(x: np.ndarray, weight_type: GGMLType) -> np.ndarray:
    """Activations as ggml rounds them before a dot product with a weight of `weight_type`."""
    if weight_type == GGMLType.F32:
        return x
    if weight_type == GGMLType.F16:
        return x.astype(np.float16).astype(np.float32)
    if weight_type == GGMLType.BF16:
        return _round_bf16(x)
    if weight_type.name in _Q8_0_FAMILY:
        return _round_q8_0(x)
    return _round_q8_k(x)


# Batches up to this many rows are multiplied one row at a time.
ROW_BY_ROW = 32


def _matmul_t(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T. Small batches go row by row through BLAS's matrix-vector product, so that a row's
    result does not depend on what else is in the batch (a matrix product sums in an order that
    depends on the row count): a sequence decodes the same alone or beside others in one batch.
    Large batches (prompts) take the matrix product; the dequantization costs more than either."""
    if x.shape[0] <= ROW_BY_ROW:
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
        for i, row in enumerate(x):
            np.matmul(w, row, out=out[i])
        return out
    return x @ w.T


def get_rows(node: Tensor, table: Any, ids: np.ndarray) -> np.ndarray:
    if isinstance(table, QuantizedWeight):
        return dequantize(table.raw[ids], table.type, (len(ids), table.shape[1]))
    return np.asarray(table[ids], dtype=np.float32)


def mul_mat(node: Tensor, a: Any, b: np.ndarray, residual: Any = None) -> np.ndarray:
    """a·b, plus `residual` in the fused form (core/lower/fuse.py) that some devices run."""
    out = _mul_mat(node, a, b)
    return out if residual is None else (out + residual).astype(np.float32, copy=False)


def _mul_mat(node: Tensor, a: Any, b: np.ndarray) -> np.ndarray:
    if isinstance(a, QuantizedWeight):
        m, k = a.shape
        x = vec_dot_round(b.reshape(-1, k), a.type)
        out = np.empty((x.shape[0], m), dtype=np.float32)
        step = _rows_per_step(k)
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            out[:, r0:r1] = _matmul_t(x, a.dequantize_rows(r0, r1))
        return out.reshape(node.shape)
    if a.dtype == np.float16:
        b = vec_dot_round(b, GGMLType.F16)
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        return _matmul_t(b.reshape(-1, a.shape[1]), a).reshape(node.shape)
    # ggml broadcasting: a's batch entry i serves b's entries i*r .. i*r + r - 1
    ba, bb = a.shape[:-2], b.shape[:-2]
    r = math.prod(bb) // math.prod(ba)
    a3 = a.reshape(-1, 1, *a.shape[-2:])
    b3 = b.reshape(a3.shape[0], r, *b.shape[-2:])
    return np.matmul(b3, np.swapaxes(a3, -1, -2)).reshape(node.shape)


def rms_norm(node: Tensor, x: np.ndarray, weight: Any = None) -> np.ndarray:
    mean = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return _weighted((x / np.sqrt(mean + node.params["eps"])).astype(np.float32), weight)


def norm(node: Tensor, x: np.ndarray, weight: Any = None) -> np.ndarray:
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(axis=-1, keepdims=True)
    var = np.mean(np.square(centered), axis=-1, keepdims=True)
    return _weighted((centered / np.sqrt(var + node.params["eps"])).astype(np.float32), weight)


def _weighted(y: np.ndarray, weight: Any) -> np.ndarray:
    """The fused form's row-vector weight (core/lower/fuse.py), as the separate mul computes it."""
    return y if weight is None else (y * weight).astype(np.float32, copy=False)


def rope(node: Tensor, x: np.ndarray, pos: np.ndarray, factors: Any = None) -> np.ndarray:
    p = node.params
    n_dims = p["n_dims"]
    half = n_dims // 2
    inv_freq = p["freq_base"] ** (-np.arange(half, dtype=np.float64) * 2.0 / n_dims)
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, dtype=np.float64)
    theta = pos.astype(np.float64)[:, None] * inv_freq[None, :] * p["freq_scale"]
    cos = (np.cos(theta) * p["attn_factor"]).astype(np.float32)[:, None, :]  # [T, 1, half]
    sin = (np.sin(theta) * p["attn_factor"]).astype(np.float32)[:, None, :]
    out = np.array(x, dtype=np.float32, copy=True)
    if p["mode"] == ROPE_NEOX:
        x0, x1 = x[..., :half], x[..., half:n_dims]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n_dims] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = x0 * cos - x1 * sin
        out[..., 1:n_dims:2] = x0 * sin + x1 * cos
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def soft_max(node: Tensor, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = x * np.float32(node.params["scale"])
    if mask is not None:
        z = z + mask
    return _softmax(z).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation, as ggml's CPU backend computes it: from a table indexed by the
    f16 value of x and holding f16 results (exact below -10 and above 10)."""
    c = np.float32(math.sqrt(2.0 / math.pi))
    h = x.astype(np.float16).astype(np.float32)
    y = 0.5 * h * (1.0 + np.tanh(c * h * (1.0 + np.float32(0.044715) * h * h)))
    y = y.astype(np.float16).astype(np.float32)
    return np.where(x <= -10.0, np.float32(0.0), np.where(x >= 10.0, x, y)).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return (x / (1.0 + np.exp(-x))).astype(np.float32)


def flash_attn_ext(
    node: Tensor, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    group = hq // hkv
    if k.dtype == np.float16:  # ggml multiplies an f16 cache with f16-rounded operands
        q = vec_dot_round(q, GGMLType.F16)
    qg = q.reshape(t, hkv, group, d)
    scores = np.einsum("thgd,shd->hgts", qg, k.astype(np.float32)) * np.float32(
        node.params["scale"]
    )
    if node.params["softcap"]:
        cap = np.float32(node.params["softcap"])
        scores = np.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores + mask
    probs = _softmax(scores)
    if v.dtype == np.float16:
        probs = vec_dot_round(probs, GGMLType.F16)
    out = np.einsum("hgts,shd->thgd", probs, v.astype(np.float32))
    return out.reshape(t, hq, dv).astype(np.float32)


def view(node: Tensor, src: np.ndarray) -> np.ndarray:
    flat = src.reshape(-1)  # a view: sources of views are contiguous storage
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(
        flat[node.params["offset"] :], node.shape, [s * item for s in node.strides]
    )


def set_rows(node: Tensor, dst: np.ndarray, ids: np.ndarray, src: np.ndarray) -> np.ndarray:
    dst[ids] = src.astype(dst.dtype)
    return dst


KERNELS: dict[Op, Callable[..., np.ndarray]] = {
    Op.GET_ROWS: get_rows,
    Op.SET_ROWS: set_rows,
    Op.VIEW: view,
    Op.RESHAPE: lambda node, x: x.reshape(node.shape),
    Op.PERMUTE: lambda node, x: x.transpose(node.params["axes"]),
    Op.CONT: lambda node, x: np.ascontiguousarray(x),
    Op.CPY: lambda node, x: x.astype(np.float16 if node.dtype == GGMLType.F16 else np.float32),
    Op.MUL_MAT: mul_mat,
    Op.ADD: lambda node, a, b: (a + b).astype(np.float32, copy=False),
    Op.MUL: lambda node, a, b: (a * b).astype(np.float32, copy=False),
    Op.SCALE: lambda node, x: x * np.float32(node.params["scale"]),
    Op.RMS_NORM: rms_norm,
    Op.NORM: norm,
    Op.ROPE: rope,
    Op.SOFT_MAX: soft_max,
    Op.SILU: lambda node, x: silu(x),
    Op.GELU: lambda node, x: gelu_tanh(x),
    Op.SWIGLU: lambda node, g, u: silu(g) * u,
    Op.GEGLU: lambda node, g, u: gelu_tanh(g) * u,
    Op.FLASH_ATTN_EXT: flash_attn_ext,
    Op.ARGMAX: lambda node, x: np.argmax(x, axis=-1).astype(np.int32),
}


class ReferenceProgram:
    """A graph lowered to a list of steps, each a kernel with its sources' slots resolved.

    Each step also names the values that die with it, so a run holds only live activations."""

    def __init__(self, graph: Any, bindings: Mapping[str, Any]) -> None:
        slot = {id(node): i for i, node in enumerate(graph.nodes)}
        self.values: list[Any] = [None] * len(graph.nodes)
        self.inputs: list[tuple[int, str, Tensor]] = []
        steps: list[tuple[int, Callable[..., Any], Tensor, tuple[int, ...]]] = []
        for i, node in enumerate(graph.nodes):
            if node.op in (Op.WEIGHT, Op.STATE):
                if node.key not in bindings:
                    raise LlmrtError(f"graph {graph.name!r} needs '{node.key}', which is not bound")
                bound = bindings[node.key]  # a state comes as a HostBuffer
                self.values[i] = bound.array if isinstance(bound, HostBuffer) else bound
            elif node.op is Op.INPUT:
                self.inputs.append((i, node.key, node))
            else:
                if node.op not in KERNELS:
                    raise UnsupportedOp(f"the reference has no kernel for {node.op.value}")
                srcs = tuple(slot[id(s)] for s in node.srcs)
                steps.append((i, KERNELS[node.op], node, srcs))
        self.outputs = {name: slot[id(t)] for name, t in graph.outputs.items()}
        # the last step that reads each computed value; outputs live to the end
        keep = set(self.outputs.values())
        last_use: dict[int, int] = {}
        for n, (_, _, _, srcs) in enumerate(steps):
            for j in srcs:
                last_use[j] = n
        dies: list[list[int]] = [[] for _ in steps]
        computed = {i for i, _, _, _ in steps}
        for j, n in last_use.items():
            if j in computed and j not in keep:
                dies[n].append(j)
        self.steps = [(*step, tuple(dies[n])) for n, step in enumerate(steps)]

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        values = self.values
        for i, key, node in self.inputs:
            values[i] = np.asarray(inputs[key]).reshape(node.shape)
        for i, kernel, node, srcs, dead in self.steps:
            values[i] = kernel(node, *[values[j] for j in srcs])
            for j in dead:
                values[j] = None
        out = {name: values[i] for name, i in self.outputs.items()}
        for i in self.outputs.values():
            values[i] = None
        for i, _, _ in self.inputs:
            values[i] = None
        return out


NUMPY_TYPES = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32}


def host_weight(tensor: Any) -> Any:
    """A weight as the reference holds it: f32/f16 as a numpy view, other types in their blocks.

    `tensor` is an `llmrt.gguf.TensorInfo` or anything with its name, type, shape and rows()."""
    if tensor.type in NUMPY_TYPES:
        return tensor.data.view(NUMPY_TYPES[tensor.type]).reshape(tensor.shape)
    if len(tensor.shape) != 2:
        raise UnsupportedOp(f"quantized weights are 2-D; {tensor.name} is {tensor.shape}")
    return QuantizedWeight(tensor.rows(0, tensor.n_rows), tensor.type, tensor.shape)
