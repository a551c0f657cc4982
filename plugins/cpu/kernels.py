"""The CPU kernels other than matrix products: norms, rope, gated activations and attention.

The light ones (norms, rope, activations) run on the calling thread: a parallel region costs more
than they do, and on a busy machine a region can wait a whole timeslice for a descheduled worker.
Each kernel computes what its `llmrt.reference` counterpart computes, in the same precision (float64
where the reference sums in float64, the f16 rounding where the reference rounds to f16), so that
the two differ only in the order of float additions. Inputs are contiguous float32 rows; the glue
in `llmrt_cpu.ops` makes them so.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from llmrt import reference
from llmrt_cpu.jit import inline, jit, pjit, stack_array
from llmrt_cpu.quant import F16_TO_F32, f32_to_f16_bits, round_f16
from llmrt_cpu.simd import NATIVE_F16, score_tile, weighted_rows, widen_f16

_F32 = np.float32

# gelu_tanh of every f16 value, from the reference itself: ggml's CPU backend computes GELU from
# such a table (indexed by the f16 bits of x, holding f16 results), and so does the reference.
with np.errstate(invalid="ignore"):  # the table's inf and nan entries
    GELU_F16 = reference.gelu_tanh(F16_TO_F32)

_lanes = stack_array(16, np.float32)


# ---- norms and activations ----------------------------------------------------------------------


@jit
def _rms_root(x: np.ndarray, i: int, eps: float) -> float:
    """sqrt(mean(x[i]²) + eps), the mean summed in float64 as the reference sums it."""
    total = 0.0
    for j in range(x.shape[1]):
        v = np.float64(x[i, j])
        total += v * v
    return math.sqrt(total / x.shape[1] + eps)


@jit
def rms_norm(x: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = x / sqrt(mean(x²) + eps) per row of x [N, K]."""
    for i in range(x.shape[0]):
        root = _rms_root(x, i, eps)
        for j in range(x.shape[1]):
            out[i, j] = _F32(np.float64(x[i, j]) / root)


@jit
def rms_norm_mul(x: np.ndarray, eps: float, weight: np.ndarray, out: np.ndarray) -> None:
    """rms_norm(x) · weight (broadcast over rows), rounding to f32 between the two as the
    reference's two kernels do."""
    for i in range(x.shape[0]):
        root = _rms_root(x, i, eps)
        for j in range(x.shape[1]):
            out[i, j] = _F32(np.float64(x[i, j]) / root) * weight[j]


@jit
def _silu(x: float) -> float:
    return x / (_F32(1.0) + np.exp(-x))


@jit
def _gelu(x: float, table: np.ndarray) -> float:
    """reference.gelu_tanh of one value: exact outside [-10, 10], else the f16 table."""
    if x <= -10.0:
        return _F32(0.0)
    if x >= 10.0:
        return x
    return table[f32_to_f16_bits(x)]


@inline
def _swiglu(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    for i in prange(gate.shape[0]):
        for j in range(gate.shape[1]):
            out[i, j] = _silu(gate[i, j]) * up[i, j]


@inline
def _geglu(gate: np.ndarray, up: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for i in prange(gate.shape[0]):
        for j in range(gate.shape[1]):
            out[i, j] = _gelu(gate[i, j], table) * up[i, j]


@jit
def swiglu(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """silu(gate) · up elementwise over [N, K], on the calling thread."""
    _swiglu(gate, up, out)


@pjit
def swiglu_rows(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """swiglu with the rows split over the threads: for prompts (one exp an element)."""
    _swiglu(gate, up, out)


@jit
def geglu(gate: np.ndarray, up: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """gelu_tanh(gate) · up elementwise over [N, K], on the calling thread."""
    _geglu(gate, up, table, out)


@pjit
def geglu_rows(gate: np.ndarray, up: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """geglu with the rows split over the threads: for prompts."""
    _geglu(gate, up, table, out)


@jit
def silu(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _silu(x[i, j])


@jit
def gelu(x: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _gelu(x[i, j], table)


@jit
def set_rows(dst: np.ndarray, ids: np.ndarray, src: np.ndarray, f16: bool) -> None:
    """dst[ids[i]] = src[i]: float32 rows, or with f16 their f16 bits (dst is then uint16),
    rounded to nearest even as numpy's astype(float16)."""
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= dst.shape[0]:
            raise IndexError("set_rows: a row index is out of range")
        for j in range(src.shape[1]):
            if f16:
                dst[ids[i], j] = f32_to_f16_bits(src[i, j])
            else:
                dst[ids[i], j] = src[i, j]


# ---- rope ---------------------------------------------------------------------------------------


@jit
def rope(
    x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, freq_scale: float, attn_factor: float,
    neox: bool, out: np.ndarray,
) -> None:  # fmt: skip
    """Rotate x [T, H, D] at positions pos over the first 2·len(inv_freq) dims of each head: pairs
    (2i, 2i+1) in normal mode, (i, i + n_dims/2) in neox mode. The angle, its cosine and sine are
    float64 and rounded to f32 once, as the reference computes them; the rest is copied."""
    t_count, heads, d = x.shape
    half = inv_freq.shape[0]
    for t in range(t_count):
        cos = np.empty(half, dtype=np.float32)
        sin = np.empty(half, dtype=np.float32)
        for i in range(half):
            theta = np.float64(pos[t]) * inv_freq[i] * freq_scale
            cos[i] = _F32(math.cos(theta) * attn_factor)
            sin[i] = _F32(math.sin(theta) * attn_factor)
        for h in range(heads):
            for i in range(half):
                a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
                x0, x1 = x[t, h, a], x[t, h, b]
                out[t, h, a] = x0 * cos[i] - x1 * sin[i]
                out[t, h, b] = x0 * sin[i] + x1 * cos[i]
            for j in range(2 * half, d):
                out[t, h, j] = x[t, h, j]


# ---- attention ----------------------------------------------------------------------------------


@jit
def round_f16_unit(p: float) -> float:
    """p in [0, 1] (a probability) rounded to the nearest f16, ties to even, as float32: what
    round_f16 gives there, without its branches. Normal f16 (p >= 2^-14) keep 10 of float32's 23
    mantissa bits, rounded on the bits; below, f16 counts in steps of 2^-24, and p·2^24 is exact."""
    bits = np.int64(np.float32(p).view(np.uint32))
    normal = np.uint32((bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF).view(np.float32)
    tiny = _F32(np.rint(p * _F32(16777216.0)) * _F32(5.9604644775390625e-08))
    return normal if p >= _F32(6.103515625e-05) else tiny


def _widen_row(dst, src, table):  # noqa: ANN001, ANN202 (typed by the overload below)
    """dst[:] = a cache row as float32: f16 caches hold uint16 bits, f32 caches floats."""


@overload(_widen_row, jit_options={"cache": True})
def _widen_row_overload(dst, src, table):  # noqa: ANN001, ANN202
    if isinstance(src.dtype, types.Integer) and NATIVE_F16:

        def widen(dst, src, table):  # noqa: ANN001, ANN202
            n = src.shape[0]
            for j in range(0, n - n % 16, 16):
                widen_f16(dst, j, src, j)
            for j in range(n - n % 16, n):
                dst[j] = table[src[j]]

        return widen
    if isinstance(src.dtype, types.Integer):

        def lookup(dst, src, table):  # noqa: ANN001, ANN202
            for j in range(src.shape[0]):
                dst[j] = table[src[j]]

        return lookup

    def copy(dst, src, table):  # noqa: ANN001, ANN202
        for j in range(src.shape[0]):
            dst[j] = src[j]

    return copy


_ATTENTION_CHUNKS = 64


@inline
def _key_score(lanes: np.ndarray, query: np.ndarray, key: np.ndarray, scale: float,
               softcap: float) -> float:  # fmt: skip
    """q·k·scale, soft-capped: the products in 16 running sums (`lanes`, on the caller's stack:
    vectorized), then the 16 in order, then the elements past the last whole 16."""
    d = key.shape[0]
    for lane in range(16):
        lanes[lane] = 0.0
    for i0 in range(0, d - d % 16, 16):
        for lane in range(16):
            lanes[lane] += query[i0 + lane] * key[i0 + lane]
    score = _F32(0.0)
    for lane in range(16):
        score += lanes[lane]
    for i in range(d - d % 16, d):
        score += query[i] * key[i]
    score *= scale
    if softcap != 0.0:
        score = np.tanh(score / softcap) * softcap
    return score


@inline
def _attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, has_mask: bool, scale: float,
    softcap: float, f16_cache: bool, table: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """softmax(q·kᵀ·scale (soft-capped) + mask)·v for q [T, Hq, D] over a cache k [S, Hkv, D],
    v [S, Hkv, Dv]; query head h reads cache head h // (Hq / Hkv).

    One (token, cache head) pair at a time, with the query heads that share the cache head, so
    each key and value row is read once for the group; the pairs are dealt to the threads in
    strides (a causal prompt's late tokens read more cells: contiguous halves left one thread
    with three quarters of the work). Only a pair's scores are kept
    (one row of S per head, never a [T, S] matrix). With an f16 cache, q and the probabilities
    are rounded to f16 before their products, as ggml multiplies an f16 cache (and as the
    reference does): the probabilities are rounded once normalised, which is why the sum is
    taken before V is read, not folded in as an online softmax would (rounding the unnormalised
    weights instead moved Gemma 3's logits measurably). Masked cells (-inf) are skipped."""
    t_count, hq, d = q.shape
    s_count, hkv, dv = v.shape
    group = hq // hkv
    items = t_count * hkv
    chunks = min(items, _ATTENTION_CHUNKS)
    for c in prange(chunks):
        for item in range(c, items, chunks):
            t, kv_head = item // hkv, item % hkv
            lanes = numba.carray(_lanes(), 16)  # q·k in 16 running sums: vectorized, on the stack
            queries = np.empty((group, d), dtype=np.float32)
            for g in range(group):
                for i in range(d):
                    value = q[t, kv_head * group + g, i]
                    queries[g, i] = round_f16(value) if f16_cache else value
            scores = np.empty((group, s_count), dtype=np.float32)
            peak = np.full(group, -np.inf, dtype=np.float32)
            key = np.empty(d, dtype=np.float32)
            for s in range(s_count):
                if has_mask and mask[t, s] == -np.inf:
                    continue
                _widen_row(key, k[s, kv_head], table)
                for g in range(group):
                    score = _key_score(lanes, queries[g], key, scale, softcap)
                    if has_mask:
                        score += mask[t, s]
                    scores[g, s] = score
                    peak[g] = max(peak[g], score)
            total = np.zeros(group, dtype=np.float32)
            for s in range(s_count):
                if has_mask and mask[t, s] == -np.inf:
                    continue
                for g in range(group):
                    weight = np.exp(scores[g, s] - peak[g])
                    scores[g, s] = weight
                    total[g] += weight
            acc = np.zeros((group, dv), dtype=np.float32)
            value_row = np.empty(dv, dtype=np.float32)
            for s in range(s_count):
                if has_mask and mask[t, s] == -np.inf:
                    continue
                _widen_row(value_row, v[s, kv_head], table)
                for g in range(group):
                    p = scores[g, s] / total[g]
                    if f16_cache:
                        p = round_f16_unit(p)
                    for i in range(dv):
                        acc[g, i] += p * value_row[i]
            for g in range(group):
                for i in range(dv):
                    out[t, kv_head * group + g, i] = acc[g, i]


_KEYS = 16  # keys a score tile takes


def attention_scratch(t: int, k_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> tuple:
    """The shapes of the float32 scratch `attention` takes for t queries over caches of these
    shapes [S, Hkv, D]: the keys transposed, [Hkv, D, stride] (a stride of whole tiles plus one,
    so that a tile's 16 rows, read down the columns, do not all fall in two L1 sets), and the
    values widened, [Hkv, S, Dv]; for one query (decoding), none."""
    if t == 1:
        return (0, 0, 0), (0, 0, 0)
    s, hkv, d = k_shape
    return (hkv, d, -(-s // _KEYS) * _KEYS + _KEYS), (hkv, s, v_shape[2])


@pjit
def _transpose_cache(k: np.ndarray, v: np.ndarray, table: np.ndarray, keys_t: np.ndarray,
                     values: np.ndarray) -> None:  # fmt: skip
    s_count, hkv, d = k.shape
    for h in prange(hkv):
        row = np.empty(d, dtype=np.float32)
        for s in range(s_count):
            _widen_row(row, k[s, h], table)
            for i in range(d):
                keys_t[h, i, s] = row[i]
            _widen_row(values[h, s], v[s, h], table)
        for i in range(d):  # the last tile's columns past the cache: zeros, never read as scores
            for s in range(s_count, keys_t.shape[2]):
                keys_t[h, i, s] = 0.0


@inline
def _group_queries(
    q: np.ndarray, t: int, kv_head: int, group: int, f16_cache: bool, queries: np.ndarray
) -> None:
    """queries[g·D:] = query head kv_head·group + g of token t, for the group's g (rounded to
    f16 for an f16 cache)."""
    d = q.shape[2]
    for g in range(group):
        for i in range(d):
            value = q[t, kv_head * group + g, i]
            queries[g * d + i] = round_f16(value) if f16_cache else value


@inline
def _seen_cells(
    mask: np.ndarray, has_mask: bool, t: int, s_count: int, cells: np.ndarray
) -> tuple[int, int]:
    """The cells token t sees, in order, into `cells`: (stop, their count), stop being one past
    the last of them (the cells past it are never read)."""
    stop = s_count
    while has_mask and stop > 0 and mask[t, stop - 1] == -np.inf:
        stop -= 1
    n_cells = 0
    for s in range(stop):
        if not (has_mask and mask[t, s] == -np.inf):
            cells[n_cells] = s
            n_cells += 1
    return stop, n_cells


@inline
def _tiled_scores(
    sums_at: Any, sums: np.ndarray, queries: np.ndarray, g: int, keys_t: np.ndarray,
    keys_flat: np.ndarray, kv_head: int, stop: int, mask: np.ndarray, has_mask: bool, t: int,
    scale: float, softcap: float, scores: np.ndarray,
) -> float:  # fmt: skip
    """scores[g, :stop]: the group's query g (queries[g·D:]) against cache head kv_head's keys
    (keys_t, and keys_flat its flat view), 16 keys a `score_tile` into `sums` (16 floats on the
    caller's stack at sums_at), scaled, soft-capped and masked; returns their peak."""
    d, stride = keys_t.shape[1], keys_t.shape[2]
    full = d - d % 16
    peak = _F32(-np.inf)
    for s0 in range(0, stop, _KEYS):
        n = min(_KEYS, stop - s0)
        score_tile(
            sums_at, queries, g * d, keys_flat, kv_head * d * stride + s0, stride, full // 16
        )
        for j in range(n):  # head sizes that are not a multiple of 16
            for i in range(full, d):
                sums[j] += queries[g * d + i] * keys_t[kv_head, i, s0 + j]
        # masked cells too, without branches: their -inf never raises the peak, and only the
        # cells seen are read below
        for j in range(n):
            score = sums[j] * scale
            if softcap != 0.0:
                score = np.tanh(score / softcap) * softcap
            if has_mask:
                score += mask[t, s0 + j]
            scores[g, s0 + j] = score
            peak = max(peak, scores[g, s0 + j])
    return peak


@inline
def _cell_probabilities(
    scores: np.ndarray, g: int, peak: float, cells: np.ndarray, n_cells: int, f16_cache: bool,
    probs: np.ndarray,
) -> None:  # fmt: skip
    """probs[:n_cells] = the softmax of scores[g] over the seen cells (rounded to f16 for an f16
    cache): the total first, so that each probability is rounded once normalised."""
    total = _F32(0.0)
    for cell in range(n_cells):
        weight = np.exp(scores[g, cells[cell]] - peak)
        probs[cell] = weight
        total += weight
    for cell in range(n_cells):
        p = probs[cell] / total
        probs[cell] = round_f16_unit(p) if f16_cache else p


@inline
def _weighted_values(
    probs: np.ndarray, cells: np.ndarray, n_cells: int, values: np.ndarray,
    values_flat: np.ndarray, kv_head: int, t: int, h: int, out: np.ndarray, out_flat: np.ndarray,
) -> None:  # fmt: skip
    """out[t, h] = Σ_cell probs[cell]·values[kv_head, cells[cell]] (values widened [Hkv, S, Dv],
    values_flat and out_flat the flat views): 64 then 16 columns a `weighted_rows`, the rest
    one at a time."""
    hq, dv = out.shape[1], out.shape[2]
    head_at = (t * hq + h) * dv
    base = kv_head * values.shape[1] * dv
    i0 = 0
    while i0 + 64 <= dv:
        weighted_rows(out_flat, head_at + i0, probs, cells, n_cells, values_flat, base + i0, dv, 4)
        i0 += 64
    while i0 + 16 <= dv:
        weighted_rows(out_flat, head_at + i0, probs, cells, n_cells, values_flat, base + i0, dv, 1)
        i0 += 16
    for i in range(i0, dv):
        acc = _F32(0.0)
        for cell in range(n_cells):
            acc += probs[cell] * values[kv_head, cells[cell], i]
        out[t, h, i] = acc


@pjit
def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, has_mask: bool, scale: float,
    softcap: float, f16_cache: bool, table: np.ndarray, keys_t: np.ndarray, values: np.ndarray,
    out: np.ndarray,
) -> None:  # fmt: skip
    """What `attention_serial` computes for each query, to the bit, for many queries (prompts):
    the cache widened once (keys transposed into `keys_t`, values into `values`: scratch shaped
    by `attention_scratch`), then per (token, cache head) pair, dealt to the threads in strides,
    the scores 16 keys at a time (`simd.score_tile`), the probabilities of the cells the token
    sees, and each 16 output columns' weighted sum over them (`simd.weighted_rows`)."""
    t_count, hq, d = q.shape
    s_count, hkv, dv = v.shape
    group = hq // hkv
    items = t_count * hkv
    chunks = min(items, _ATTENTION_CHUNKS)
    _transpose_cache(k, v, table, keys_t, values)
    keys_flat, values_flat, out_flat = keys_t.reshape(-1), values.reshape(-1), out.reshape(-1)
    for c in prange(chunks):
        sums_at = _lanes()
        sums = numba.carray(sums_at, _KEYS)
        queries = np.empty(group * d, dtype=np.float32)
        scores = np.empty((group, s_count), dtype=np.float32)
        cells = np.empty(s_count, dtype=np.int64)
        probs = np.empty(s_count, dtype=np.float32)
        for item in range(c, items, chunks):
            t, kv_head = item // hkv, item % hkv
            _group_queries(q, t, kv_head, group, f16_cache, queries)
            stop, n_cells = _seen_cells(mask, has_mask, t, s_count, cells)
            for g in range(group):
                peak = _tiled_scores(sums_at, sums, queries, g, keys_t, keys_flat, kv_head, stop,
                                     mask, has_mask, t, scale, softcap, scores)  # fmt: skip
                _cell_probabilities(scores, g, peak, cells, n_cells, f16_cache, probs)
                _weighted_values(probs, cells, n_cells, values, values_flat, kv_head, t,
                                 kv_head * group + g, out, out_flat)  # fmt: skip


@jit
def attention_serial(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, has_mask: bool, scale: float,
    softcap: float, f16_cache: bool, table: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """_attention on the calling thread: for one token, whose few (token, cache head) pairs cost
    less than a parallel region (SmolLM2, 40 cells of 256: 19.6 us on one thread, 22.5 split
    over two; by query head instead, 41 and 51)."""
    _attention(q, k, v, mask, has_mask, scale, softcap, f16_cache, table, out)


LONG_CELLS = 1024  # from this many cells one token's attention is split over the threads
_CELLS_A_CHUNK = 256


@pjit
def attention_long(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, has_mask: bool, scale: float,
    softcap: float, f16_cache: bool, table: np.ndarray, out: np.ndarray,
) -> None:  # fmt: skip
    """What `attention_serial` computes for one token, to the bit, split over the threads for a
    long cache, in three parallel steps that keep every sum in its order: the scores by (cache
    head, chunk of cells); the probabilities by query head (each head's total in cell order);
    the weighted sums of values by (cache head, 32 or 64 output columns), each column over the cells
    in order. Only the cells the token sees are read."""
    _, hq, d = q.shape
    s_count, hkv, dv = v.shape
    group = hq // hkv
    cells = np.empty(s_count, dtype=np.int64)
    n_cells = 0
    for s in range(s_count):
        if not (has_mask and mask[0, s] == -np.inf):
            cells[n_cells] = s
            n_cells += 1
    queries = np.empty((hq, d), dtype=np.float32)
    for h in range(hq):
        for i in range(d):
            queries[h, i] = round_f16(q[0, h, i]) if f16_cache else q[0, h, i]
    n_chunks = -(-n_cells // _CELLS_A_CHUNK)
    probs = np.empty((hq, n_cells), dtype=np.float32)  # the scores, then the probabilities
    peaks = np.full((hq, max(n_chunks, 1)), -np.inf, dtype=np.float32)
    for item in prange(hkv * n_chunks):
        kv_head, chunk = item // n_chunks, item % n_chunks
        lanes = numba.carray(_lanes(), 16)
        key = np.empty(d, dtype=np.float32)
        for cell in range(chunk * _CELLS_A_CHUNK, min(n_cells, (chunk + 1) * _CELLS_A_CHUNK)):
            s = cells[cell]
            _widen_row(key, k[s, kv_head], table)
            for g in range(group):
                h = kv_head * group + g
                score = _key_score(lanes, queries[h], key, scale, softcap)
                if has_mask:
                    score += mask[0, s]
                probs[h, cell] = score
                peaks[h, chunk] = max(peaks[h, chunk], score)
    for h in prange(hq):
        peak = np.float32(-np.inf)
        for chunk in range(n_chunks):
            peak = max(peak, peaks[h, chunk])
        total = _F32(0.0)
        for cell in range(n_cells):
            weight = np.exp(probs[h, cell] - peak)
            probs[h, cell] = weight
            total += weight
        for cell in range(n_cells):
            p = probs[h, cell] / total
            probs[h, cell] = round_f16_unit(p) if f16_cache else p
    columns = 32 if dv <= 64 else 64  # a part's per-cell overhead against enough parts to share
    n_parts = -(-dv // columns)
    for item in prange(hkv * n_parts):
        kv_head, part = item // n_parts, item % n_parts
        i0 = part * columns
        width = min(columns, dv - i0)
        acc = np.zeros((group, columns), dtype=np.float32)
        values = np.empty(width, dtype=np.float32)
        for cell in range(n_cells):
            _widen_row(values, v[cells[cell], kv_head, i0 : i0 + width], table)
            for g in range(group):
                p = probs[kv_head * group + g, cell]
                for i in range(width):
                    acc[g, i] += p * values[i]
        for g in range(group):
            for i in range(width):
                out[0, kv_head * group + g, i0 + i] = acc[g, i]
