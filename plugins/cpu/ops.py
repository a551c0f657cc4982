"""Lowering a graph for the CPU: each node gets a numba kernel where one fits it, the reference
kernel otherwise. Decided once per compiled graph; a step then only calls what was chosen.

A lowering takes the node and returns its step function, `(node, *source values) -> value` like
the reference kernels, or None when the node is outside what the fast kernel handles (a batched
mul_mat of two activations, a table in a type without a kernel...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from llmrt import reference
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Op, Tensor
from llmrt_cpu import kernels, quant

Step = Callable[..., Any]
_NO_MASK = np.zeros((1, 1), dtype=np.float32)


def _rows(x: np.ndarray, k: int) -> np.ndarray:
    """x as contiguous float32 rows of k (no copy when it already is)."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, k)


class Lowering:
    """What the steps of one compiled graph share: the last activation a mul_mat converted
    (`source`), for which weight family (`family`), and the result (`prepared`: q8 blocks or
    rounded floats). q, k and v multiply the same activation, as do gate and up: it is quantized
    once, not three times. The source is held, so its identity cannot be reused by a new array
    while it is compared."""

    def __init__(self) -> None:
        self.source: Any = None
        self.family = ""
        self.prepared: tuple[np.ndarray, ...] = ()


def _mul_mat(node: Tensor, shared: Lowering) -> Step | None:
    weight, _ = node.srcs
    if weight.op is not Op.WEIGHT or len(weight.shape) != 2:
        return None
    if weight.dtype not in quant.SUPPORTED_TYPES:
        return None
    weight_type, k, shape = weight.dtype, weight.shape[1], node.shape
    family = quant.activation_family(weight_type)
    # F32 and F16 weights are bound as numpy arrays, the others as their raw blocks
    blocks = weight_type not in (GGMLType.F32, GGMLType.F16)

    def mul_mat(node: Tensor, w: Any, x: np.ndarray) -> np.ndarray:
        if x is not shared.source or family != shared.family:
            shared.prepared = quant.prepare_activations(weight_type, _rows(x, k))
            shared.source, shared.family = x, family
        rows = math.prod(shape[:-1])
        out = quant.mul_mat_prepared(weight_type, w.raw if blocks else w, shared.prepared, rows)
        return out.reshape(shape)

    return mul_mat


def _get_rows(node: Tensor, shared: Lowering) -> Step | None:
    table, _ = node.srcs
    if table.op is not Op.WEIGHT or table.dtype not in quant.SUPPORTED_TYPES:
        return None
    if table.dtype in (GGMLType.F32, GGMLType.F16):
        return None  # numpy's fancy indexing already is a copy of rows
    weight_type, k = table.dtype, table.shape[1]

    def get_rows(node: Tensor, w: reference.QuantizedWeight, ids: np.ndarray) -> np.ndarray:
        return quant.get_rows(weight_type, w.raw, k, ids)

    return get_rows


def _rms_norm(node: Tensor, shared: Lowering) -> Step:
    eps, k, shape = float(node.params["eps"]), node.shape[-1], node.shape

    def rms_norm(node: Tensor, x: np.ndarray) -> np.ndarray:
        rows = _rows(x, k)
        out = np.empty_like(rows)
        kernels.rms_norm(rows, eps, out)
        return out.reshape(shape)

    return rms_norm


def rope_frequencies(params: dict[str, Any], factors: Any = None) -> np.ndarray:
    """Each rotated pair's inverse frequency (float64), divided by its factor where the model
    has them (Llama 3's long-context scaling), as the reference computes it."""
    n_dims = params["n_dims"]
    inv_freq = params["freq_base"] ** (-np.arange(n_dims // 2, dtype=np.float64) * 2.0 / n_dims)
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, dtype=np.float64)
    return inv_freq


def _rope(node: Tensor, shared: Lowering) -> Step:
    p = node.params
    inv_freq = rope_frequencies(p)
    freq_scale, attn_factor = float(p["freq_scale"]), float(p["attn_factor"])
    neox, shape = p["mode"] == ROPE_NEOX, node.shape

    def rope(node: Tensor, x: np.ndarray, pos: np.ndarray, factors: Any = None) -> np.ndarray:
        freqs = inv_freq if factors is None else rope_frequencies(p, factors)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(shape)
        out = np.empty_like(x)
        positions = np.ascontiguousarray(pos, dtype=np.int32)
        kernels.rope(x, positions, freqs, freq_scale, attn_factor, neox, out)
        return out

    return rope


def _gated(
    kernel: Callable[..., None], parallel: Callable[..., None], *extra: Any
) -> Callable[[Tensor, Lowering], Step]:
    def lower(node: Tensor, shared: Lowering) -> Step:
        k, shape = node.shape[-1], node.shape
        # a prompt's gated units are worth a parallel region; a decode step's are not
        chosen = parallel if node.n_elements > quant.SERIAL_ELEMENTS else kernel

        def glu(node: Tensor, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
            g = _rows(gate, k)
            out = np.empty_like(g)
            chosen(g, _rows(up, k), *extra, out)
            return out.reshape(shape)

        return glu

    return lower


def _unary(kernel: Callable[..., None], *extra: Any) -> Callable[[Tensor, Lowering], Step]:
    def lower(node: Tensor, shared: Lowering) -> Step:
        k, shape = node.shape[-1], node.shape

        def unary(node: Tensor, x: np.ndarray) -> np.ndarray:
            rows = _rows(x, k)
            out = np.empty_like(rows)
            kernel(rows, *extra, out)
            return out.reshape(shape)

        return unary

    return lower


def _cache_operand(x: np.ndarray) -> np.ndarray:
    """A KV cache view as the attention kernels read it: f16 as its uint16 bits."""
    if x.dtype != np.float16:
        return np.asarray(x, dtype=np.float32)
    return x.view(np.uint16)


def _flash_attn_ext(node: Tensor, shared: Lowering) -> Step | None:
    _, k, v = node.srcs[:3]
    if k.dtype != v.dtype:
        return None
    f16_cache = k.dtype == GGMLType.F16
    scale, softcap = float(node.params["scale"]), float(node.params["softcap"])
    shape = node.shape

    def flash_attn_ext(
        node: Tensor, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.float32)
        out = np.empty(shape, dtype=np.float32)
        has_mask = mask is not None
        mask = np.ascontiguousarray(mask, dtype=np.float32) if has_mask else _NO_MASK
        t = q.shape[0]
        k, v = _cache_operand(k), _cache_operand(v)
        common = (mask, has_mask, scale, softcap, f16_cache, quant.F16_TO_F32)
        if t == 1 and k.shape[0] >= kernels.LONG_CELLS and numba.get_num_threads() > 1:
            kernels.attention_long(q, k, v, *common, out)
        elif t == 1:
            kernels.attention_serial(q, k, v, *common, out)
        else:
            keys_t, values = kernels.attention_scratch(t, k.shape, v.shape)
            scratch = np.empty(keys_t, np.float32), np.empty(values, np.float32)
            kernels.attention(q, k, v, *common, *scratch, out)
        return out

    return flash_attn_ext


def _view(node: Tensor, shared: Lowering) -> Step | None:
    """A contiguous window (a KV cache's used cells): a slice and a reshape, no as_strided."""
    if not node.is_contiguous:
        return None
    start, size, shape = node.params["offset"], math.prod(node.shape), node.shape

    def view(node: Tensor, src: np.ndarray) -> np.ndarray:
        return src.reshape(-1)[start : start + size].reshape(shape)

    return view


def _set_rows(node: Tensor, shared: Lowering) -> Step | None:
    """Rows of f32 values into an f16 (KV cache) or f32 state, rounded as numpy rounds."""
    if node.dtype not in (GGMLType.F16, GGMLType.F32):
        return None
    row = math.prod(node.shape[1:])
    f16 = node.dtype == GGMLType.F16

    def set_rows(node: Tensor, dst: np.ndarray, ids: np.ndarray, src: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(src, dtype=np.float32).reshape(-1, row)
        cells = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        target = dst.reshape(dst.shape[0], row)
        kernels.set_rows(target.view(np.uint16) if f16 else target, cells, rows, f16)
        return dst

    return set_rows


LOWERINGS: dict[Op, Callable[[Tensor, Lowering], Step | None]] = {
    Op.VIEW: _view,
    Op.SET_ROWS: _set_rows,
    Op.MUL_MAT: _mul_mat,
    Op.GET_ROWS: _get_rows,
    Op.RMS_NORM: _rms_norm,
    Op.ROPE: _rope,
    Op.SWIGLU: _gated(kernels.swiglu, kernels.swiglu_rows),
    Op.GEGLU: _gated(kernels.geglu, kernels.geglu_rows, kernels.GELU_F16),
    Op.SILU: _unary(kernels.silu),
    Op.GELU: _unary(kernels.gelu, kernels.GELU_F16),
    Op.FLASH_ATTN_EXT: _flash_attn_ext,
}


def _norm_times_weight(eps: float, k: int, shape: tuple[int, ...]) -> Step:
    def rms_norm_mul(node: Tensor, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        rows = _rows(x, k)
        out = np.empty_like(rows)
        kernels.rms_norm_mul(rows, eps, np.ascontiguousarray(weight, dtype=np.float32), out)
        return out.reshape(shape)

    return rms_norm_mul


ProgramStep = tuple[int, Step, Tensor, tuple[int, ...], tuple[int, ...]]


def norm_products(steps: list[ProgramStep], outputs: set[int]) -> dict[int, int]:
    """The products rms_norm(x) · weight whose norm feeds nothing else (every norm of the llama
    and gemma graphs), as the product's position in `steps` -> the norm's."""
    readers: dict[int, int] = {}
    for _, _, _, srcs, _ in steps:
        for j in srcs:
            readers[j] = readers.get(j, 0) + 1
    producer = {i: n for n, (i, _, _, _, _) in enumerate(steps)}
    found: dict[int, int] = {}
    for n, (_, _, node, srcs, _) in enumerate(steps):
        if node.op is not Op.MUL or len(srcs) != 2:
            continue
        norm_slot, weight_slot = srcs
        norm_at = producer.get(norm_slot)
        if norm_at is None or weight_slot in producer:
            continue  # the second operand must be a leaf (a weight)
        norm = steps[norm_at][2]
        weight = node.srcs[1]
        if (
            norm.op is Op.RMS_NORM
            and readers.get(norm_slot) == 1
            and norm_slot not in outputs
            and weight.op is Op.WEIGHT
            and weight.shape == norm.shape[-1:]
            and node.shape == norm.shape
        ):
            found[n] = norm_at
    return found


def fuse_norm_mul(steps: list[ProgramStep], outputs: set[int]) -> list[ProgramStep]:
    """rms_norm(x) · weight as one step where the norm feeds only that product: one pass over x,
    one step less. The norm's step goes; the product reads x, and the values that died with the
    norm die with the product instead."""
    found = norm_products(steps, outputs)
    fused: dict[int, ProgramStep] = {}
    for n, norm_at in found.items():
        i, _, node, (norm_slot, weight_slot), dead = steps[n]
        _, _, norm, norm_srcs, norm_dead = steps[norm_at]
        step = _norm_times_weight(float(norm.params["eps"]), norm.shape[-1], node.shape)
        moved = tuple(j for j in norm_dead if j != norm_slot) + tuple(
            j for j in dead if j != norm_slot
        )
        fused[n] = (i, step, node, (norm_srcs[0], weight_slot), moved)
    removed = set(found.values())
    return [fused.get(n, s) for n, s in enumerate(steps) if n not in removed]


class ProductGroup:
    """Products of one activation with several weights of one quantized type (q, k and v; gate
    and up), for a graph of at most ROW_TOKENS rows: the first of them in the program computes
    all of them in one kernel call over a row table, each then takes its columns."""

    def __init__(self, weight_type: GGMLType, weights: list[Any], k: int, shared: Lowering):
        self.weight_type, self.k, self.shared = weight_type, k, shared
        self.table = quant.RowTable(weights, weight_type)
        self.bounds = np.concatenate([[0], np.cumsum([w.shape[0] for w in weights])]).tolist()
        self.family = quant.activation_family(weight_type)
        self.source: Any = None
        self.result: np.ndarray | None = None

    def step(self, member: int, shape: tuple[int, ...]) -> Step:
        start, stop = self.bounds[member], self.bounds[member + 1]
        t = math.prod(shape[:-1])

        def grouped_mul_mat(node: Tensor, w: Any, x: np.ndarray) -> np.ndarray:
            if member == 0 or x is not self.source or self.result is None:
                shared = self.shared
                if x is not shared.source or self.family != shared.family:
                    rows = _rows(x, self.k)
                    shared.prepared = quant.prepare_activations(self.weight_type, rows)
                    shared.source, shared.family = x, self.family
                self.result = quant.mul_mat_rows(self.weight_type, self.table, shared.prepared, t)
                self.source = x
            return self.result[:, start:stop].reshape(shape)

        return grouped_mul_mat


def product_groups(steps: list[ProgramStep], values: list[Any]) -> list[list[int]]:
    """The quantized products of at most ROW_TOKENS rows (decoding), by activation and weight
    type: each group's positions in `steps`, in program order (q, k and v; gate and up)."""
    groups: dict[tuple[int, GGMLType], list[int]] = {}
    for n, (_, _, node, srcs, _) in enumerate(steps):
        if node.op is not Op.MUL_MAT or math.prod(node.shape[:-1]) > quant.ROW_TOKENS:
            continue
        weight = node.srcs[0]
        if (
            weight.op is Op.WEIGHT
            and len(weight.shape) == 2
            and weight.dtype in quant.SUPPORTED_TYPES
            and weight.dtype not in quant.FLOAT_TYPES
            and isinstance(values[srcs[0]], reference.QuantizedWeight)
        ):
            groups.setdefault((srcs[1], weight.dtype), []).append(n)
    return list(groups.values())


def group_products(steps: list[ProgramStep], values: list[Any], shared: Lowering) -> None:
    """Give the quantized products of graphs of at most ROW_TOKENS rows (decoding) row-table
    steps, in place: products of one activation with weights of one type share one kernel call;
    a product alone still skips the per-call setup of `mul_mat_prepared`."""
    for members in product_groups(steps, values):
        weight = steps[members[0]][2].srcs[0]
        weights = [values[steps[n][3][0]].raw for n in members]
        group = ProductGroup(weight.dtype, weights, weight.shape[1], shared)
        for member, n in enumerate(members):
            i, _, node, srcs, dead = steps[n]
            steps[n] = (i, group.step(member, node.shape), node, srcs, dead)


def lower(node: Tensor, fallback: Step, shared: Lowering | None = None) -> Step:
    """The step that runs `node`: its numba kernel where one fits, else `fallback` (the
    reference's). Steps of one graph share one `Lowering`."""
    lowering = LOWERINGS.get(node.op)
    step = lowering(node, shared or Lowering()) if lowering is not None else None
    return step if step is not None else fallback
