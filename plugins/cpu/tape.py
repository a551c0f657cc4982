"""A graph as one compiled call: lowered once to a tape of instructions over one arena, replayed
by a numba interpreter.

Run step by step, a decode step of a 30-layer model is ~700 Python dispatches (views, reshapes,
array allocations and kernel calls) costing more than the arithmetic of everything but the
matrix products. Here every view is resolved at lowering to an address, every value gets a place
in one arena planned by liveness, and `run_tape` walks the instructions in compiled code, calling
the same kernels the step program calls (so both compute the same bits), with the GIL released.

Graphs whose every op has an instruction here get a tape: decode steps, and prompts whose
quantized products all have the 8-row kernels (a prompt's products otherwise take the tiles
kernels, step by step). An instruction is a row of int64 operands (arena offsets, addresses,
sizes, flags) and a row of float64 parameters; its opcode is the first operand.

Every tape of a thread runs in one arena of that thread, grown to the largest tape's plan, as
ggml's graph allocator sizes one compute buffer for the largest graph: a prompt's activations
(megabytes) are not allocated, and their pages not faulted in, at every run (on this project's
VM, first-touch page faults cost a prompt of Gemma 3 270M 15% of its time), and compiled graphs
of many shapes do not each hold their own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from llmrt import reference
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Op, Tensor
from llmrt_cpu import kernels, ops, quant
from llmrt_cpu.jit import jit
from llmrt_cpu.simd import bytes_at

WIDTH = 16  # int64 operands of an instruction
ALIGN = 64  # bytes: each arena value starts on a cache line

(NORM, ADD, MUL, SCALE, QUANTIZE, ROWS, FLOAT_PRODUCT, COPY_COLS, ROPE, SET_ROWS, ATTENTION, GLU,
 UNARY, GET_ROWS_QUANT, GET_ROWS_FLOAT) = range(1, 16)  # fmt: skip
FAMILY_Q8_0, FAMILY_Q8_1, FAMILY_Q8_K = 0, 1, 2
SILU_KIND, GELU_KIND = 0, 1


class Unsupported(Exception):
    """The graph has an op or layout the tape has no instruction for: run it step by step."""


# ---- the interpreter ----------------------------------------------------------------------------


@jit
def _floats(address: int, rows: int, cols: int) -> np.ndarray:
    return numba.carray(bytes_at(address), rows * cols * 4).view(np.float32).reshape((rows, cols))


@jit
def _floats3(address: int, a: int, b: int, c: int) -> np.ndarray:
    return numba.carray(bytes_at(address), a * b * c * 4).view(np.float32).reshape((a, b, c))


@jit
def _halves3(address: int, a: int, b: int, c: int) -> np.ndarray:
    return numba.carray(bytes_at(address), a * b * c * 2).view(np.uint16).reshape((a, b, c))


@jit
def _ints(address: int, n: int) -> np.ndarray:
    return numba.carray(bytes_at(address), n * 4).view(np.int32)


@jit
def _int8s(address: int, rows: int, cols: int) -> np.ndarray:
    return numba.carray(bytes_at(address), rows * cols).view(np.int8).reshape((rows, cols))


@jit
def _int32s(address: int, rows: int, cols: int) -> np.ndarray:
    return numba.carray(bytes_at(address), rows * cols * 4).view(np.int32).reshape((rows, cols))


@jit
def _bytes(address: int, rows: int, cols: int) -> np.ndarray:
    return numba.carray(bytes_at(address), rows * cols).reshape((rows, cols))


@jit
def _check_ids(ids: np.ndarray, stop: int) -> None:
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= stop:
            raise IndexError("get_rows: a row index is out of range")


@jit
def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, has_mask: bool, scale: float,
    softcap: float, f16_cache: bool, table: np.ndarray, keys_t: np.ndarray, values: np.ndarray,
    out: np.ndarray, threaded: bool,
) -> None:  # fmt: skip
    """Attention on the calling thread for one token over a short cache, split over the threads
    for more tokens, or for a long cache when the step runs on more than one thread."""
    if q.shape[0] == 1 and k.shape[0] >= kernels.LONG_CELLS and threaded:
        kernels.attention_long(q, k, v, mask, has_mask, scale, softcap, f16_cache, table, out)
    elif q.shape[0] == 1:
        kernels.attention_serial(q, k, v, mask, has_mask, scale, softcap, f16_cache, table, out)
    else:
        kernels.attention(q, k, v, mask, has_mask, scale, softcap, f16_cache, table, keys_t,
                          values, out)  # fmt: skip


# Each `_run_<op>` runs one instruction: `c` is its row of int64 operands (c[0] the opcode; the
# docstring names the rest in order) and `params` its row of float64 parameters.


@jit
def _run_norm(c: np.ndarray, params: np.ndarray) -> None:
    """NORM x rows k weight|0 out; eps: rms_norm, times the weight row where there is one."""
    x, out = _floats(c[1], c[2], c[3]), _floats(c[5], c[2], c[3])
    if c[4] == 0:
        kernels.rms_norm(x, params[0], out)
    else:
        kernels.rms_norm_mul(x, params[0], _floats(c[4], 1, c[3])[0], out)


@jit
def _run_binary(c: np.ndarray, op: int) -> None:
    """ADD or MUL a rows k b b_rows out: b has as many rows as a, or one, broadcast."""
    a, b = _floats(c[1], c[2], c[3]), _floats(c[4], c[5], c[3])
    out = _floats(c[6], c[2], c[3])
    for i in range(c[2]):
        bi = i if c[5] > 1 else 0
        if op == ADD:
            for j in range(c[3]):
                out[i, j] = a[i, j] + b[bi, j]
        else:
            for j in range(c[3]):
                out[i, j] = a[i, j] * b[bi, j]


@jit
def _run_scale(c: np.ndarray, params: np.ndarray) -> None:
    """SCALE x n out; scale."""
    x, out = _floats(c[1], 1, c[2]), _floats(c[3], 1, c[2])
    s = np.float32(params[0])
    for j in range(c[2]):
        out[0, j] = x[0, j] * s


@jit
def _run_quantize(c: np.ndarray) -> None:
    """QUANTIZE family x t k xq xd xs xsum: activations to q8 blocks of the family."""
    t, k = c[3], c[4]
    x, xq, xd = _floats(c[2], t, k), _int8s(c[5], t, k), _floats(c[6], t, k // 32)
    serial = t * k <= quant.SERIAL_ELEMENTS
    if c[1] == FAMILY_Q8_K:
        xd, xsum = _floats(c[6], t, k // 256), _int32s(c[8], t, k // 16)
        if serial:
            quant.quantize_q8_k_serial(x, xq, xd, xsum)
        else:
            quant.quantize_q8_k(x, xq, xd, xsum)
    else:
        xs = _floats(c[7], t, k // 32 if c[1] == FAMILY_Q8_1 else 0)
        xsum = _int32s(c[8], t, k // 32)
        if serial:
            quant.quantize_q8_0_serial(x, xq, xd, xs, xsum)
        else:
            quant.quantize_q8_0(x, xq, xd, xs, xsum)


@jit
def _run_rows(c: np.ndarray, tables: np.ndarray) -> None:
    """ROWS kind family table n_weights row_bytes t k xq xd xs xsum out total x8: quantized
    weights (a row table at tables[table:]: n_weights addresses, then their row counts) times
    q8 activations."""
    kind, nw, t, k = c[1], c[4], c[6], c[7]
    addresses, rows = tables[c[3] : c[3] + nw], tables[c[3] + nw : c[3] + 2 * nw]
    xq, out = _int8s(c[8], t, k), _floats(c[12], t, c[13])
    if c[2] == FAMILY_Q8_K:
        xd, xsum = _floats(c[9], t, k // 256), _int32s(c[11], t, k // 16)
        if c[14] != 0:
            quant.matmul_x8k_rows(addresses, rows, c[5], kind, xq, xd, xsum, out)
        else:
            quant.matmul_qk_rows(addresses, rows, c[5], kind, xq, xd, xsum, out)
    else:
        xd, xsum = _floats(c[9], t, k // 32), _int32s(c[11], t, k // 32)
        xs = _floats(c[10], t, k // 32 if c[2] == FAMILY_Q8_1 else 0)
        if c[14] != 0:  # repacked 8 rows a pass: rows counts groups, row_bytes a group's
            quant.matmul_x8_rows(addresses, rows, c[5], kind, xq, xd, xs, xsum, out)
        else:
            quant.matmul_q32_rows(addresses, rows, c[5], kind, xq, xd, xs, xsum, out)


@jit
def _run_float_product(c: np.ndarray, f16_table: np.ndarray) -> None:
    """FLOAT_PRODUCT type weight m k x t rounded out: an f32, f16 or bf16 weight times x, which
    for the half types is first rounded to the weight's type (into `rounded`)."""
    m, k, t = c[3], c[4], c[6]
    x, out = _floats(c[5], t, k), _floats(c[8], t, m)
    if c[1] == GGMLType.F32:
        quant.matmul_f32(_floats(c[2], m, k), x, out)
    else:
        bf16 = c[1] == GGMLType.BF16
        rounded = _floats(c[7], t, k)
        quant.round_rows(x, bf16, rounded)
        bits = _bytes(c[2], m, 2 * k).view(np.uint16)
        quant.matmul_half(bits, bf16, f16_table, rounded, out)


@jit
def _run_copy_cols(c: np.ndarray) -> None:
    """COPY_COLS src t total start width dst: columns start .. start + width - 1 of src."""
    src, dst = _floats(c[1], c[2], c[3]), _floats(c[6], c[2], c[5])
    for i in range(c[2]):
        for j in range(c[5]):
            dst[i, j] = src[i, c[4] + j]


@jit
def _run_rope(c: np.ndarray, params: np.ndarray, freqs: np.ndarray) -> None:
    """ROPE x t heads d pos freqs half neox out; freq_scale attn_factor (the inverse frequencies
    at freqs[freqs:], `half` of them)."""
    x, out = _floats3(c[1], c[2], c[3], c[4]), _floats3(c[9], c[2], c[3], c[4])
    inv_freq = freqs[c[6] : c[6] + c[7]]
    kernels.rope(x, _ints(c[5], c[2]), inv_freq, params[0], params[1], c[8] != 0, out)


@jit
def _run_set_rows(c: np.ndarray) -> None:
    """SET_ROWS dst cells row f16 ids n src: n rows of src into an f16 or f32 cache."""
    src, ids = _floats(c[7], c[6], c[3]), _ints(c[5], c[6])
    if c[4] != 0:
        dst16 = _bytes(c[1], c[2], 2 * c[3]).view(np.uint16)
        kernels.set_rows(dst16, ids, src, True)
    else:
        kernels.set_rows(_floats(c[1], c[2], c[3]), ids, src, False)


@jit
def _run_attention(c: np.ndarray, params: np.ndarray, table: np.ndarray, threaded: bool) -> None:
    """ATTENTION q t hq d k v s hkv dv mask|0 f16 out keys_t stride values; scale softcap (an f16
    cache's values through `table`, f16 bits to float32)."""
    t, hq, d, s, hkv, dv = c[2], c[3], c[4], c[7], c[8], c[9]
    q, out = _floats3(c[1], t, hq, d), _floats3(c[12], t, hq, dv)
    has_mask = c[10] != 0
    mask = _floats(c[10], t, s) if has_mask else _floats(c[1], 1, 1)
    scale, softcap = params[0], params[1]
    rows = hkv if t > 1 else 0  # scratch for prompts (kernels.attention_scratch)
    keys_t, values = _floats3(c[13], rows, d, c[14]), _floats3(c[15], rows, s, dv)
    if c[11] != 0:
        k16, v16 = _halves3(c[5], s, hkv, d), _halves3(c[6], s, hkv, dv)
        _attend(
            q, k16, v16, mask, has_mask, scale, softcap, True, table, keys_t, values, out, threaded
        )
    else:
        k32, v32 = _floats3(c[5], s, hkv, d), _floats3(c[6], s, hkv, dv)
        _attend(
            q, k32, v32, mask, has_mask, scale, softcap, False, table, keys_t, values, out, threaded
        )


@jit
def _run_glu(c: np.ndarray, gelu_table: np.ndarray) -> None:
    """GLU kind gate up rows k out: swiglu (SILU_KIND) or geglu."""
    gate, up = _floats(c[2], c[4], c[5]), _floats(c[3], c[4], c[5])
    out = _floats(c[6], c[4], c[5])
    parallel = c[4] * c[5] > quant.SERIAL_ELEMENTS  # a prompt's: as the step program
    if c[1] == SILU_KIND:
        if parallel:
            kernels.swiglu_rows(gate, up, out)
        else:
            kernels.swiglu(gate, up, out)
    elif parallel:
        kernels.geglu_rows(gate, up, gelu_table, out)
    else:
        kernels.geglu(gate, up, gelu_table, out)


@jit
def _run_unary(c: np.ndarray, gelu_table: np.ndarray) -> None:
    """UNARY kind x rows k out: silu (SILU_KIND) or gelu."""
    x, out = _floats(c[2], c[3], c[4]), _floats(c[5], c[3], c[4])
    if c[1] == SILU_KIND:
        kernels.silu(x, out)
    else:
        kernels.gelu(x, gelu_table, out)


@jit
def _run_get_rows_quant(c: np.ndarray) -> None:
    """GET_ROWS_QUANT kind table n_rows row_bytes ids n k out: rows of a quantized table."""
    ids = _ints(c[5], c[6])
    _check_ids(ids, c[3])
    raw, out = _bytes(c[2], c[3], c[4]), _floats(c[8], c[6], c[7])
    if c[1] in (quant.Q2_K, quant.Q3_K, quant.Q4_K, quant.Q5_K, quant.Q6_K):
        quant.get_rows_qk(raw, c[1], ids, out)
    else:
        quant.get_rows_q32(raw, c[1], ids, out)


@jit
def _run_get_rows_float(c: np.ndarray, f16_table: np.ndarray) -> None:
    """GET_ROWS_FLOAT f16 table n_rows k ids n out: rows of an f16 (f16 != 0) or f32 table."""
    ids = _ints(c[5], c[6])
    _check_ids(ids, c[3])
    out = _floats(c[7], c[6], c[4])
    if c[1] != 0:
        table = _bytes(c[2], c[3], 2 * c[4]).view(np.uint16)
        for i in range(c[6]):
            for j in range(c[4]):
                out[i, j] = f16_table[table[ids[i], j]]
    else:
        table32 = _floats(c[2], c[3], c[4])
        for i in range(c[6]):
            for j in range(c[4]):
                out[i, j] = table32[ids[i], j]


@jit
def run_tape(
    code: np.ndarray, reals: np.ndarray, tables: np.ndarray, freqs: np.ndarray,
    f16_table: np.ndarray, gelu_table: np.ndarray, threaded: bool,
) -> None:  # fmt: skip
    """Run the instructions of `code` [N, WIDTH] (parameters in `reals` [N, 4], weight row tables
    in `tables`, rope frequencies in `freqs`) in order; every operand address is live memory.
    `threaded`: the step runs on more than one thread (numba's count is read outside: reading it
    in here is a ctypes call, which would keep numba from caching this kernel on disk)."""
    for n in range(code.shape[0]):
        c, params = code[n], reals[n]
        op = c[0]
        if op == NORM:
            _run_norm(c, params)
        elif op in (ADD, MUL):
            _run_binary(c, op)
        elif op == SCALE:
            _run_scale(c, params)
        elif op == QUANTIZE:
            _run_quantize(c)
        elif op == ROWS:
            _run_rows(c, tables)
        elif op == FLOAT_PRODUCT:
            _run_float_product(c, f16_table)
        elif op == COPY_COLS:
            _run_copy_cols(c)
        elif op == ROPE:
            _run_rope(c, params, freqs)
        elif op == SET_ROWS:
            _run_set_rows(c)
        elif op == ATTENTION:
            _run_attention(c, params, f16_table, threaded)
        elif op == GLU:
            _run_glu(c, gelu_table)
        elif op == UNARY:
            _run_unary(c, gelu_table)
        elif op == GET_ROWS_QUANT:
            _run_get_rows_quant(c)
        elif op == GET_ROWS_FLOAT:
            _run_get_rows_float(c, f16_table)


# ---- lowering a graph to a tape -----------------------------------------------------------------

_FAMILIES = {"q8_0": FAMILY_Q8_0, "q8_1": FAMILY_Q8_1, "q8_K": FAMILY_Q8_K}
_ARENA_TYPES = {GGMLType.F32: np.dtype(np.float32), GGMLType.I32: np.dtype(np.int32)}


class _Value:
    """Where a value lives: `storage` is an arena allocation (its id; `offset` in bytes within
    it), or -1 for memory outside the arena (a weight or a state; `offset` is its address)."""

    __slots__ = ("storage", "offset", "shape", "dtype")

    def __init__(self, storage: int, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.storage, self.offset, self.shape, self.dtype = storage, offset, shape, np.dtype(dtype)

    def alias(self, shape: tuple[int, ...], byte_offset: int = 0) -> _Value:
        return _Value(self.storage, self.offset + byte_offset, shape, self.dtype)


def _rows_and_width(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def _plan(sizes: list[int], first: list[int], last: list[int]) -> tuple[list[int], int]:
    """Arena offsets for allocations live from instruction first[s] to last[s] (inclusive):
    first fit, each allocation made before the ones that die at the same instruction are
    released, so that no instruction writes over its own operands. Returns (offsets, size)."""
    order = sorted(range(len(sizes)), key=lambda s: first[s])
    dying: dict[int, list[int]] = {}
    for s in range(len(sizes)):
        dying.setdefault(last[s], []).append(s)
    offsets = [0] * len(sizes)
    live: list[tuple[int, int]] = []  # (offset, end), sorted
    size, at = 0, 0
    for n in sorted(set(first) | set(dying)):
        while at < len(order) and first[order[at]] == n:
            s = order[at]
            need = -(-max(sizes[s], 1) // ALIGN) * ALIGN
            offset = 0
            for start, end in live:
                if start - offset >= need:
                    break
                offset = max(offset, end)
            offsets[s] = offset
            live.append((offset, offset + need))
            live.sort()
            size = max(size, offset + need)
            at += 1
        for s in dying.get(n, ()):
            need = -(-max(sizes[s], 1) // ALIGN) * ALIGN
            live.remove((offsets[s], offsets[s] + need))
    return offsets, size


class Tape:
    """A reference program's steps (graph order, sources resolved, weights and states bound)
    lowered to instructions for `run_tape`. Raises Unsupported where it cannot be."""

    def __init__(self, program: reference.ReferenceProgram) -> None:
        self._sizes: list[int] = []
        self._instructions: list[tuple[list[Any], tuple[float, ...], list[_Value]]] = []
        self._tables: list[int] = []
        self._freqs: list[float] = []
        self._held: list[Any] = []  # what the tape's fixed addresses point into
        self._quantized: dict[tuple[int, str], tuple[_Value, ...]] = {}
        self._slots: dict[int, _Value] = {}
        values, steps = program.values, program.steps
        self._bound = values
        self._producer = {i: node for i, _, node, _, _ in steps}
        self._step_srcs = {i: srcs for i, _, _, srcs, _ in steps}
        # the step program's groupings and fusions, so that both compute the same bits
        self._group_of = {
            steps[n][0]: [steps[m][0] for m in members]
            for members in ops.product_groups(steps, values)
            for n in members
        }
        self._fused: dict[int, tuple[int, float]] = {}
        for n, norm_at in ops.norm_products(steps, set(program.outputs.values())).items():
            i, _, _, srcs, _ = steps[n]
            weight = values[srcs[1]]
            if isinstance(weight, np.ndarray) and weight.dtype == np.float32:
                _, _, norm, norm_srcs, _ = steps[norm_at]
                self._fused[i] = (norm_srcs[0], float(norm.params["eps"]))
        self._folded = {self._step_srcs[i][0] for i in self._fused}
        inputs = []
        for i, key, node in program.inputs:
            if node.dtype not in _ARENA_TYPES:
                raise Unsupported(f"input {key} of type {node.dtype.name}")
            self._slots[i] = self._new(node.shape, _ARENA_TYPES[node.dtype])
            inputs.append((key, self._slots[i]))
        for i, _, node, srcs, _ in steps:
            self._lower(i, node, srcs)
        kept = [self._slots[i] for i in program.outputs.values()]
        if any(v.storage < 0 for v in kept):
            raise Unsupported("an output outside the arena")
        self._encode(inputs, {name: self._slots[i] for name, i in program.outputs.items()}, kept)

    # -- values

    def _new(self, shape: tuple[int, ...], dtype: Any) -> _Value:
        self._sizes.append(math.prod(shape) * np.dtype(dtype).itemsize)
        return _Value(len(self._sizes) - 1, 0, tuple(shape), dtype)

    def _fixed(self, array: np.ndarray) -> _Value:
        if not array.flags.c_contiguous:
            raise Unsupported("a bound array that is not contiguous")
        self._held.append(array)
        return _Value(-1, array.ctypes.data, array.shape, array.dtype)

    def _value(self, slot: int) -> _Value:
        value = self._slots.get(slot)
        if value is not None:
            return value
        bound = self._bound[slot]
        if isinstance(bound, np.ndarray):
            value = self._fixed(bound)
            self._slots[slot] = value
            return value
        raise Unsupported(f"operand {slot} is {type(bound).__name__}")

    def _f32(self, slot: int) -> _Value:
        value = self._value(slot)
        if value.dtype != np.float32:
            raise Unsupported(f"operand {slot} is {value.dtype}, not float32")
        return value

    def _emit(self, operands: list[Any], reals: tuple[float, ...] = ()) -> None:
        """One instruction: int operands, a _Value standing for its address; each _Value among
        them is read or written by it, which is what the arena plan needs to know."""
        used = [v for v in operands if isinstance(v, _Value)]
        self._instructions.append((operands, reals, used))

    # -- ops

    def _lower(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        op = node.op
        if op is Op.RESHAPE:
            self._slots[i] = self._value(srcs[0]).alias(node.shape)
        elif op is Op.VIEW:
            if not node.is_contiguous:
                raise Unsupported("a strided view")
            src = self._value(srcs[0])
            self._slots[i] = src.alias(node.shape, node.params["offset"] * src.dtype.itemsize)
        elif op is Op.RMS_NORM:
            if i not in self._folded:  # else computed with the product that reads it
                self._norm(i, node, srcs[0], 0, float(node.params["eps"]))
        elif op is Op.MUL and i in self._fused:
            x_slot, eps = self._fused[i]
            self._norm(i, node, x_slot, self._value(srcs[1]), eps)
        elif op is Op.MUL:
            self._binary(i, node, srcs, MUL)
        elif op is Op.ADD:
            self._binary(i, node, srcs, ADD)
        elif op is Op.SCALE:
            x = self._f32(srcs[0])
            out = self._slots[i] = self._new(node.shape, np.float32)
            self._emit([SCALE, x, math.prod(node.shape), out], (node.params["scale"],))
        elif op is Op.MUL_MAT:
            self._mul_mat(i, node, srcs)
        elif op is Op.GET_ROWS:
            self._get_rows(i, node, srcs)
        elif op is Op.ROPE:
            self._rope(i, node, srcs)
        elif op is Op.SET_ROWS:
            self._set_rows(i, node, srcs)
        elif op is Op.FLASH_ATTN_EXT:
            self._attention(i, node, srcs)
        elif op in (Op.SWIGLU, Op.GEGLU):
            gate, up = self._f32(srcs[0]), self._f32(srcs[1])
            rows, k = _rows_and_width(node.shape)
            out = self._slots[i] = self._new(node.shape, np.float32)
            kind = SILU_KIND if op is Op.SWIGLU else GELU_KIND
            self._emit([GLU, kind, gate, up, rows, k, out])
        elif op in (Op.SILU, Op.GELU):
            x = self._f32(srcs[0])
            rows, k = _rows_and_width(node.shape)
            out = self._slots[i] = self._new(node.shape, np.float32)
            self._emit([UNARY, SILU_KIND if op is Op.SILU else GELU_KIND, x, rows, k, out])
        else:
            raise Unsupported(f"no instruction for {op.value}")

    def _norm(self, i: int, node: Tensor, x_slot: int, weight: Any, eps: float) -> None:
        x = self._f32(x_slot)
        rows, k = _rows_and_width(node.shape)
        out = self._slots[i] = self._new(node.shape, np.float32)
        self._emit([NORM, x, rows, k, weight, out], (eps,))

    def _binary(self, i: int, node: Tensor, srcs: tuple[int, ...], opcode: int) -> None:
        a, b = self._f32(srcs[0]), self._f32(srcs[1])
        rows, k = _rows_and_width(node.shape)
        if math.prod(b.shape) == rows * k:
            b_rows = rows
        elif b.shape[-1:] == (k,) and math.prod(b.shape) == k:
            b_rows = 1
        else:
            raise Unsupported(f"{node.op.value} broadcasting {b.shape} over {node.shape}")
        out = self._slots[i] = self._new(node.shape, np.float32)
        self._emit([opcode, a, rows, k, b, b_rows, out])

    def _activations(self, slot: int, weight_type: GGMLType, t: int, k: int) -> tuple[_Value, ...]:
        """The q8 blocks of activation `slot` for weights of this type's family, quantized once
        for every product that needs them: (xq, xd, xs, xsum)."""
        family = quant.activation_family(weight_type)
        key = (slot, family)
        if key not in self._quantized:
            code = _FAMILIES[family]
            per_scale = 256 if code == FAMILY_Q8_K else 32
            per_sum = 16 if code == FAMILY_Q8_K else 32
            xq = self._new((t, k), np.int8)
            xd = self._new((t, k // per_scale), np.float32)
            xs = self._new((t, k // 32 if code == FAMILY_Q8_1 else 0), np.float32)
            xsum = self._new((t, k // per_sum), np.int32)
            self._emit([QUANTIZE, code, self._f32(slot), t, k, xq, xd, xs, xsum])
            self._quantized[key] = (xq, xd, xs, xsum)
        return self._quantized[key]

    def _mul_mat(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        weight = node.srcs[0]
        if weight.op is not Op.WEIGHT or len(weight.shape) != 2:
            raise Unsupported("a product of two activations")
        t, (m, k) = math.prod(node.shape[:-1]), weight.shape
        if i in self._group_of:
            if i not in self._slots:
                self._group_product(node, srcs, self._group_of[i], t, k)
            return
        bound = self._bound[srcs[0]]
        if isinstance(bound, reference.QuantizedWeight) and weight.dtype not in quant.FLOAT_TYPES:
            self._group_product(node, srcs, [i], t, k)  # a prompt's products: one at a time
            return
        x = self._f32(srcs[1])
        out = self._slots[i] = self._new(node.shape, np.float32)
        if weight.dtype is GGMLType.BF16 and isinstance(bound, reference.QuantizedWeight):
            w = self._fixed(np.ascontiguousarray(bound.raw))
        elif weight.dtype in (GGMLType.F32, GGMLType.F16) and isinstance(bound, np.ndarray):
            w = self._fixed(bound)
        else:
            raise Unsupported(f"a product with a {weight.dtype.name} weight")
        rounded = self._new((t, k), np.float32) if weight.dtype is not GGMLType.F32 else x
        self._emit([FLOAT_PRODUCT, int(weight.dtype), w, m, k, x, t, rounded, out])

    def _group_product(
        self, node: Tensor, srcs: tuple[int, ...], members: list[int], t: int, k: int
    ) -> None:
        """Every member of a product group computed at its first member: one kernel call over a
        row table, each member's result its columns (an alias for one row, else copied out)."""
        weight_type = node.srcs[0].dtype
        raws = [self._bound[self._step_srcs[n][0]].raw for n in members]
        rows = [raw.shape[0] for raw in raws]
        table = quant.RowTable(raws, weight_type)  # 8 rows a pass, where it can
        if t > quant.ROW_TOKENS and not table.x8:
            raise Unsupported(f"a prompt's {weight_type.name} product (the tiles kernel's)")
        self._held.append(table)
        table_at = len(self._tables)
        self._tables += table.addresses.tolist() + table.rows.tolist()
        xq, xd, xs, xsum = self._activations(srcs[1], weight_type, t, k)
        family = _FAMILIES[quant.activation_family(weight_type)]
        out = self._new((t, table.total), np.float32)
        self._emit([ROWS, int(weight_type), family, table_at, len(raws), table.row_bytes, t, k,
                    xq, xd, xs, xsum, out, table.total, int(table.x8)])  # fmt: skip
        start = 0
        for n, count in zip(members, rows, strict=True):
            shape = self._producer[n].shape
            if t == 1 or len(members) == 1:
                self._slots[n] = out.alias(shape, start * 4)
            else:
                self._slots[n] = self._new(shape, np.float32)
                self._emit([COPY_COLS, out, t, table.total, start, count, self._slots[n]])
            start += count

    def _get_rows(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        table_node = node.srcs[0]
        bound = self._bound[srcs[0]] if table_node.op is Op.WEIGHT else None
        ids = self._value(srcs[1])
        n_ids, k = node.shape
        out = self._slots[i] = self._new(node.shape, np.float32)
        if isinstance(bound, reference.QuantizedWeight):
            if bound.type in quant.FLOAT_TYPES or bound.type not in quant.SUPPORTED_TYPES:
                raise Unsupported(f"rows of a {bound.type.name} table")
            raw = self._fixed(np.ascontiguousarray(bound.raw))
            self._emit([GET_ROWS_QUANT, int(bound.type), raw, raw.shape[0], raw.shape[1], ids,
                        n_ids, k, out])  # fmt: skip
            return
        table = self._value(srcs[0])
        if table.dtype not in (np.float32, np.float16):
            raise Unsupported(f"rows of a {table.dtype} table")
        n_rows = math.prod(table.shape[:-1])
        self._emit([GET_ROWS_FLOAT, int(table.dtype == np.float16), table, n_rows, k, ids, n_ids,
                    out])  # fmt: skip

    def _rope(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        factors = None
        if len(srcs) > 2:
            factors = self._bound[srcs[2]]
            if node.srcs[2].op is not Op.WEIGHT or not isinstance(factors, np.ndarray):
                raise Unsupported("rope factors that are not a weight")
        freqs = ops.rope_frequencies(node.params, factors)
        at = len(self._freqs)
        self._freqs += freqs.tolist()
        x, pos = self._f32(srcs[0]), self._value(srcs[1])
        t, heads, d = node.shape
        out = self._slots[i] = self._new(node.shape, np.float32)
        neox = int(node.params["mode"] == ROPE_NEOX)
        p = node.params
        self._emit([ROPE, x, t, heads, d, pos, at, len(freqs), neox, out],
                   (float(p["freq_scale"]), float(p["attn_factor"])))  # fmt: skip

    def _set_rows(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        dst, ids, src = self._value(srcs[0]), self._value(srcs[1]), self._f32(srcs[2])
        if dst.dtype not in (np.float16, np.float32) or dst.storage >= 0:
            raise Unsupported(f"set_rows into {dst.dtype}")
        row = math.prod(node.shape[1:])
        self._emit([SET_ROWS, dst, node.shape[0], row, int(dst.dtype == np.float16), ids,
                    src.shape[0], src])  # fmt: skip
        self._slots[i] = dst

    def _attention(self, i: int, node: Tensor, srcs: tuple[int, ...]) -> None:
        q, k, v = self._f32(srcs[0]), self._value(srcs[1]), self._value(srcs[2])
        if k.dtype != v.dtype or k.dtype not in (np.float16, np.float32):
            raise Unsupported("attention over caches of different or unusual types")
        mask = self._f32(srcs[3]) if len(srcs) > 3 else 0
        (t, hq, d), (s, hkv, _), dv = node.srcs[0].shape, node.srcs[1].shape, node.shape[2]
        out = self._slots[i] = self._new(node.shape, np.float32)
        keys_shape, values_shape = kernels.attention_scratch(t, node.srcs[1].shape, (s, hkv, dv))
        keys_t, values = self._new(keys_shape, np.float32), self._new(values_shape, np.float32)
        self._emit([ATTENTION, q, t, hq, d, k, v, s, hkv, dv, mask, int(k.dtype == np.float16),
                    out, keys_t, keys_shape[2], values], (node.params["scale"],
                                                           node.params["softcap"]))  # fmt: skip

    # -- the arena and the encoded instructions

    def _encode(
        self, inputs: list[tuple[str, _Value]], outputs: dict[str, _Value], kept: list[_Value]
    ) -> None:
        n_storages = len(self._sizes)
        first, last = [len(self._instructions)] * n_storages, [-1] * n_storages
        for _, value in inputs:
            first[value.storage] = -1
        for n, (_, _, used) in enumerate(self._instructions):
            for value in used:
                if value.storage >= 0:
                    first[value.storage] = min(first[value.storage], n)
                    last[value.storage] = max(last[value.storage], n)
        for value in kept:
            last[value.storage] = len(self._instructions)
        for s in range(n_storages):  # an input nothing reads still gets its place
            last[s] = max(last[s], first[s])
        offsets, size = _plan(self._sizes, first, last)

        def place(value: _Value) -> int:
            return offsets[value.storage] + value.offset

        # operands in the arena are encoded as offsets, and moved to the arena's address by `run`
        self._offsets = np.zeros((len(self._instructions), WIDTH), dtype=np.int64)
        self._in_arena = np.zeros((len(self._instructions), WIDTH), dtype=np.int64)
        self.reals = np.zeros((len(self._instructions), 4), dtype=np.float64)
        for n, (operands, reals, _) in enumerate(self._instructions):
            for j, o in enumerate(operands):
                arena = isinstance(o, _Value) and o.storage >= 0
                fixed = o.offset if isinstance(o, _Value) else int(o)
                self._offsets[n, j] = place(o) if arena else fixed
                self._in_arena[n, j] = int(arena)
            self.reals[n, : len(reals)] = reals
        self.tables = np.array(self._tables or [0], dtype=np.int64)
        self.freqs = np.array(self._freqs or [0.0], dtype=np.float64)
        self._inputs = [(key, place(v), v.shape, v.dtype) for key, v in inputs]
        self._outputs = [(name, place(v), v.shape, v.dtype) for name, v in outputs.items()]
        self.arena_bytes = size
        self._relocated: tuple[Any, np.ndarray, list, list] = (None, self._offsets, [], [])

    @property
    def code(self) -> np.ndarray:
        """The instructions as the last run ran them (arena operands as addresses)."""
        return self._relocated[1]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        arena = _thread_arena(self.arena_bytes)
        relocated = self._relocated
        if relocated[0] is not arena:  # the thread's arena moved (grew) or another thread runs it
            relocated = self._relocated = self._relocate(arena)
        _, code, input_views, output_views = relocated
        for key, view in input_views:
            view[...] = np.asarray(inputs[key]).reshape(view.shape)
        run_tape(code, self.reals, self.tables, self.freqs, quant.F16_TO_F32, kernels.GELU_F16,
                 numba.get_num_threads() > 1)  # fmt: skip
        return {name: view.copy() for name, view in output_views}

    def _relocate(self, arena: np.ndarray) -> tuple[Any, np.ndarray, list, list]:
        """The instructions and the input and output views for an arena at a new address."""

        def view(at: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            return arena[at : at + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)

        code = self._offsets + self._in_arena * arena.ctypes.data
        inputs = [(key, view(at, shape, dtype)) for key, at, shape, dtype in self._inputs]
        outputs = [(name, view(at, shape, dtype)) for name, at, shape, dtype in self._outputs]
        return arena, code, inputs, outputs


_arenas = threading.local()


def _thread_arena(size: int) -> np.ndarray:
    """This thread's arena, at least `size` bytes, ALIGN-aligned; it only grows."""
    arena = getattr(_arenas, "arena", None)
    if arena is None or arena.nbytes < size:
        buffer = np.zeros(max(size, 1) + ALIGN, dtype=np.uint8)
        start = -buffer.ctypes.data % ALIGN
        arena = _arenas.arena = buffer[start : start + max(size, 1)]
    return arena
