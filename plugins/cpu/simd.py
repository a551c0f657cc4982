"""Integer dot products of one weight block with int8 activations, written as LLVM vector IR.

numba's loop vectorizer turns a block's `Σ level·x` into wide loads and multiplies only where the
levels already sit in an array, and moving unpacked levels through memory costs more than the
products (a stored-then-reloaded vector stalls store forwarding). These intrinsics load a block's
bytes as one vector, unpack the levels in registers and reduce, in generic LLVM IR (no target
intrinsics): LLVM picks the instructions for the host, VNNI or AVX2 `vpmaddwd` on x86, NEON
`sdot` or `smull` on aarch64. Integer sums are exact, so each returns what the scalar loop it
replaces returns.

Each takes a weight row (1-D C-contiguous uint8 array, or a stack pointer for `dot_i8`) with a byte
offset, and an activation row (1-D C-contiguous int8 array) with an element offset. `n` (the
element count) must be a compile-time constant.
"""

from __future__ import annotations

import platform
from typing import Any

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8, _I32 = ir.IntType(8), ir.IntType(32)


def _byte_pointer(context: Any, builder: Any, ty: Any, value: Any, offset: Any) -> Any:
    if isinstance(ty, types.CPointer):
        data = value
    else:
        data = context.make_array(ty)(context, builder, value).data
    return builder.gep(builder.bitcast(data, ir.PointerType(_I8)), [offset])


def _load(builder: Any, pointer: Any, n: int, element: Any = _I8) -> Any:
    vector = builder.load(builder.bitcast(pointer, ir.PointerType(ir.VectorType(element, n))))
    vector.align = 1
    return vector


def _splat(builder: Any, value: Any, n: int, element: Any = _I8) -> Any:
    if isinstance(element, ir.IntType) and value.type.width > element.width:
        value = builder.trunc(value, element)
    single = builder.insert_element(ir.Constant(ir.VectorType(element, n), None), value,
                                    ir.Constant(_I32, 0))  # fmt: skip
    return builder.shuffle_vector(single, single, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _dot(builder: Any, levels: Any, x: Any, n: int) -> Any:
    """Σ sext(levels)·sext(x) over n int8 lanes, as int32."""
    wide = ir.VectorType(_I32, n)
    products = builder.mul(builder.sext(levels, wide), builder.sext(x, wide))
    reduce = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_I32, [wide]), f"llvm.vector.reduce.add.v{n}i32"
    )
    return builder.call(reduce, [products])


def _is_row(ty: Any) -> bool:
    return isinstance(ty, types.CPointer) or (
        isinstance(ty, types.Array) and ty.ndim == 1 and ty.layout == "C"
    )


def _literal(n: Any) -> int | None:
    return n.literal_value if isinstance(n, types.IntegerLiteral) else None


@intrinsic
def dot_i8(typingctx: Any, w: Any, w_at: Any, x: Any, x_at: Any, n: Any) -> Any:
    """Σ int8 w[w_at + j] · x[x_at + j], j < n (Q8_0's levels, or levels unpacked to the stack)."""
    count = _literal(n)
    if count is None or not (_is_row(w) and _is_row(x)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        wv = _load(builder, _byte_pointer(context, builder, signature.args[0], args[0], args[1]),
                   count)  # fmt: skip
        xv = _load(builder, _byte_pointer(context, builder, signature.args[2], args[2], args[3]),
                   count)  # fmt: skip
        return _dot(builder, wv, xv, count)

    return types.int32(w, w_at, x, x_at, n), codegen


@intrinsic
def dot_u4(
    typingctx: Any, w: Any, w_at: Any, shift: Any, offset: Any, x: Any, x_at: Any, n: Any
) -> Any:
    """Σ (((w[w_at + j] >> shift) & 15) - offset) · x[x_at + j], j < n: one nibble of each of n
    bytes (shift 0: the low ones, 4: the high ones) as levels, less `offset` (8 for Q4_0)."""
    count = _literal(n)
    if count is None or not (_is_row(w) and _is_row(x)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        w_arr, w_at, shift, offset, x_arr, x_at, _ = args
        packed = _load(builder, _byte_pointer(context, builder, signature.args[0], w_arr, w_at),
                       count)  # fmt: skip
        nibbles = builder.and_(builder.lshr(packed, _splat(builder, shift, count)),
                               ir.Constant(packed.type, [15] * count))  # fmt: skip
        levels = builder.sub(nibbles, _splat(builder, offset, count))
        xv = _load(builder, _byte_pointer(context, builder, signature.args[4], x_arr, x_at), count)
        return _dot(builder, levels, xv, count)

    return types.int32(w, w_at, shift, offset, x, x_at, n), codegen


def _nibbles32(builder: Any, packed: Any) -> Any:
    """16 bytes -> their 32 nibbles, the low ones first."""
    low = builder.and_(packed, ir.Constant(packed.type, [15] * 16))
    high = builder.lshr(packed, ir.Constant(packed.type, [4] * 16))
    return builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))


@intrinsic
def dot_q4(typingctx: Any, w: Any, qs_at: Any, offset: Any, x: Any, x_at: Any) -> Any:
    """A Q4_0 / Q4_1 block's Σ (level - offset) · x[x_at + j], j < 32: level j is nibble j of the
    16 bytes at qs_at, the low nibbles first."""
    if not (_is_row(w) and _is_row(x)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        w_arr, qs_at, offset, x_arr, x_at = args
        packed = _load(builder, _byte_pointer(context, builder, signature.args[0], w_arr, qs_at),
                       16)  # fmt: skip
        levels = builder.sub(_nibbles32(builder, packed), _splat(builder, offset, 32))
        xv = _load(builder, _byte_pointer(context, builder, signature.args[3], x_arr, x_at), 32)
        return _dot(builder, levels, xv, 32)

    return types.int32(w, qs_at, offset, x, x_at), codegen


def _q5_levels(context: Any, builder: Any, row_ty: Any, row: Any, qs_at: Any, qh_at: Any,
               offset: Any) -> Any:  # fmt: skip
    """A Q5_0 / Q5_1 block's 32 levels less `offset`: nibble j of the 16 bytes at qs_at (low
    nibbles first) with bit j of the little-endian 32 bits at qh_at as its fifth bit."""
    packed = _load(builder, _byte_pointer(context, builder, row_ty, row, qs_at), 16)
    # byte j of the 4 qh bytes spread to lane j, tested against bit j % 8 (no 32-bit shifts)
    qh = _load(builder, _byte_pointer(context, builder, row_ty, row, qh_at), 4)
    lanes = ir.VectorType(_I8, 32)
    spread = builder.shuffle_vector(qh, qh, ir.Constant(ir.VectorType(_I32, 32),
                                                        [j // 8 for j in range(32)]))  # fmt: skip
    bit = builder.and_(spread, ir.Constant(lanes, [1 << (j % 8) for j in range(32)]))
    fifth = builder.select(builder.icmp_unsigned("!=", bit, ir.Constant(lanes, [0] * 32)),
                           ir.Constant(lanes, [16] * 32), ir.Constant(lanes, [0] * 32))  # fmt: skip
    return builder.sub(builder.or_(_nibbles32(builder, packed), fifth), _splat(builder, offset, 32))


@intrinsic
def dot_q5(typingctx: Any, w: Any, qs_at: Any, qh_at: Any, offset: Any, x: Any, x_at: Any) -> Any:
    """A Q5_0 / Q5_1 block's Σ (level - offset) · x[x_at + j], j < 32 (see _q5_levels)."""
    if not (_is_row(w) and _is_row(x)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        w_arr, qs_at, qh_at, offset, x_arr, x_at = args
        levels = _q5_levels(context, builder, signature.args[0], w_arr, qs_at, qh_at, offset)
        xv = _load(builder, _byte_pointer(context, builder, signature.args[4], x_arr, x_at), 32)
        return _dot(builder, levels, xv, 32)

    return types.int32(w, qs_at, qh_at, offset, x, x_at), codegen


@intrinsic
def dot_q6(
    typingctx: Any, w: Any, low_at: Any, low_shift: Any, high_at: Any, high_shift: Any, x: Any,
    x_at: Any, n: Any,
) -> Any:  # fmt: skip
    """Q6_K's Σ (level - 32) · x[x_at + j], j < n: level j is the nibble at `low_shift` of byte
    low_at + j with the two bits at `high_shift` of byte high_at + j above it."""
    count = _literal(n)
    if count is None or not (_is_row(w) and _is_row(x)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        w_arr, low_at, low_shift, high_at, high_shift, x_arr, x_at, _ = args
        row_ty = signature.args[0]
        low = _load(builder, _byte_pointer(context, builder, row_ty, w_arr, low_at), count)
        high = _load(builder, _byte_pointer(context, builder, row_ty, w_arr, high_at), count)
        bytes_ty = low.type
        low = builder.and_(builder.lshr(low, _splat(builder, low_shift, count)),
                           ir.Constant(bytes_ty, [15] * count))  # fmt: skip
        high = builder.and_(builder.lshr(high, _splat(builder, high_shift, count)),
                            ir.Constant(bytes_ty, [3] * count))  # fmt: skip
        six_bits = builder.or_(low, builder.shl(high, ir.Constant(bytes_ty, [4] * count)))
        levels = builder.sub(six_bits, ir.Constant(bytes_ty, [32] * count))
        xv = _load(builder, _byte_pointer(context, builder, signature.args[5], x_arr, x_at), count)
        return _dot(builder, levels, xv, count)

    return types.int32(w, low_at, low_shift, high_at, high_shift, x, x_at, n), codegen


@intrinsic
def bytes_at(typingctx: Any, address: Any) -> Any:
    """The memory at an integer address as a uint8 pointer (for `numba.carray`): kernels reach the
    rows of several weights through one table of addresses, so that one compiled signature serves
    any number of weights. The caller keeps the arrays alive."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.inttoptr(args[0], ir.PointerType(_I8))

    return types.CPointer(types.uint8)(address), codegen


def _typed_pointer(
    context: Any, builder: Any, ty: Any, value: Any, index: Any, element: Any
) -> Any:
    """Element `index` of a 1-D C array (or pointer) as a pointer to `element`."""
    if isinstance(ty, types.CPointer):
        data = value
    else:
        data = context.make_array(ty)(context, builder, value).data
    return builder.gep(builder.bitcast(data, ir.PointerType(element)), [index])


@intrinsic
def mac_pairs(
    typingctx: Any, acc: Any, levels: Any, j: Any, stride: Any, x: Any, x_at: Any, n: Any
) -> Any:
    """For 4 weight rows r (their int16 levels at levels[r·stride:]) and 16 activation rows i:
    acc[16r + i] += Σ_p levels[r·stride + j + 2p]·x[x_at + 32p + 2i]
                    + levels[r·stride + j + 2p + 1]·x[x_at + 32p + 2i + 1], p < n:
    n pairs of elements, the activations as `_pair_tiles` lays them out (each activation row's
    elements j and j + 1 side by side, then the next pair's 16 rows), into 4 × 16 int32 sums on
    the caller's stack (`acc`, a pointer), kept in registers across the pairs. Each activation
    vector is loaded once for the 4 rows; each product of a pair is x86's `vpmaddwd` shape (32
    products an instruction). Exact: the levels and activations are small."""
    count = _literal(n)
    if count is None or not (_is_row(levels) and _is_row(x) and isinstance(acc, types.CPointer)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        acc, levels, j, stride, x, x_at, _ = args
        i16 = ir.IntType(16)
        half = ir.VectorType(_I32, 16)
        wide = ir.VectorType(_I32, 32)
        evens = ir.Constant(half, list(range(0, 32, 2)))
        odds = ir.Constant(half, list(range(1, 32, 2)))
        base = builder.bitcast(acc, ir.PointerType(half))
        pointers = [builder.gep(base, [ir.Constant(_I32, r)]) for r in range(4)]
        sums = []
        for pointer in pointers:
            current = builder.load(pointer)
            current.align = 4
            sums.append(current)
        stride = context.cast(builder, stride, signature.args[3], types.int64)
        j = context.cast(builder, j, signature.args[2], types.int64)
        x_at = context.cast(builder, x_at, signature.args[5], types.int64)
        for p in range(count):
            x_pair_at = builder.add(x_at, ir.Constant(x_at.type, 32 * p))
            xv = builder.load(builder.bitcast(
                _typed_pointer(context, builder, signature.args[4], x, x_pair_at, i16),
                ir.PointerType(ir.VectorType(i16, 32))))  # fmt: skip
            xv.align = 2
            x_wide = builder.sext(xv, wide)
            for r in range(4):
                level_at = builder.add(builder.mul(stride, ir.Constant(stride.type, r)),
                                       builder.add(j, ir.Constant(j.type, 2 * p)))  # fmt: skip
                pair = builder.load(builder.bitcast(
                    _typed_pointer(context, builder, signature.args[1], levels, level_at, i16),
                    ir.PointerType(ir.VectorType(i16, 2))))  # fmt: skip
                pair.align = 2
                weights = builder.shuffle_vector(pair, pair, ir.Constant(wide, [0, 1] * 16))
                products = builder.mul(builder.sext(weights, wide), x_wide)
                pairs = builder.add(builder.shuffle_vector(products, products, evens),
                                    builder.shuffle_vector(products, products, odds))  # fmt: skip
                sums[r] = builder.add(sums[r], pairs)
        for pointer, total in zip(pointers, sums, strict=True):
            builder.store(total, pointer).align = 4
        return context.get_dummy_value()

    return types.none(acc, levels, j, stride, x, x_at, n), codegen


def _native_f16() -> bool:
    """Whether LLVM converts f16 vectors in hardware here (x86 with F16C, any aarch64); elsewhere
    it would call runtime library functions that numba's JIT may not link."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except RuntimeError:
        return False


NATIVE_F16 = _native_f16()


@intrinsic
def widen_f16(typingctx: Any, dst: Any, dst_at: Any, src: Any, src_at: Any) -> Any:
    """dst[dst_at + j] = float(src[src_at + j]) for j < 16: 16 f16 (their uint16 bits) to float32
    in one conversion instruction (x86 `vcvtph2ps`); exact. Only where NATIVE_F16."""
    if not (_is_row(dst) and _is_row(src)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        dst, dst_at, src, src_at = args
        halves = builder.load(builder.bitcast(
            _typed_pointer(context, builder, signature.args[2], src, src_at, ir.IntType(16)),
            ir.PointerType(ir.VectorType(ir.HalfType(), 16))))  # fmt: skip
        halves.align = 2
        floats = builder.fpext(halves, ir.VectorType(ir.FloatType(), 16))
        target = builder.bitcast(
            _typed_pointer(context, builder, signature.args[0], dst, dst_at, ir.FloatType()),
            ir.PointerType(floats.type))  # fmt: skip
        builder.store(floats, target).align = 4
        return context.get_dummy_value()

    return types.none(dst, dst_at, src, src_at), codegen


# ---- eight weight rows at once, on repacked Q4_0 / Q4_1 blocks ----------------------------------
#
# A decode product reduces each row's block to one integer: a horizontal sum per block and per
# row, which costs more than the multiplies. Repacked so that 4 bytes of each of 8 rows sit side
# by side (`llmrt_cpu.quant.repack_x8`), one 32-byte load holds 4 levels of 8 rows, and a
# multiply-add of unsigned by signed bytes summing groups of 4 (x86 `vpdpbusd`, or `vpmaddubsw`
# then `vpmaddwd` with AVX2) against 4 activation bytes broadcast leaves each row's partial sum in
# its own lane: no horizontal sums at all. LLVM does not form these instructions from generic IR
# for lane-wise sums, so this one intrinsic names them, for the hosts that have them; elsewhere
# the products keep the row-by-row kernels (X8_VARIANT is X8_NONE).
X8_NONE, X8_VNNI, X8_AVX2 = 0, 1, 2  # which instructions block_x8 uses
X8_Q4, X8_Q4_MIN, X8_Q8 = 0, 1, 2  # how a repacked block holds its levels


def _x8_variant() -> int:
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return X8_NONE
    if not NATIVE_F16:
        return X8_NONE
    if features.get("avx512vnni") and features.get("avx512vl") or features.get("avxvnni"):
        return X8_VNNI
    if features.get("avx2"):
        return X8_AVX2
    return X8_NONE


X8_VARIANT = _x8_variant()
_V8I32 = ir.VectorType(_I32, 8)


def _i32(builder: Any, value: Any) -> Any:
    if value.type.width > 32:
        return builder.trunc(value, _I32)
    return builder.sext(value, _I32) if value.type.width < 32 else value


def _sum_groups_of_4(builder: Any, total: Any, unsigned: Any, signed: Any, variant: int) -> Any:
    """total (<8 x i32>) + for each lane l, Σ_i unsigned[4l + i]·signed[4l + i] (bytes); exact on
    the AVX2 path only for unsigned levels below 128 (its pair sums saturate at 16 bits)."""
    if variant == X8_VNNI:  # one intrinsic for AVX512-VNNI (+VL) and AVX-VNNI's VEX form
        vnni = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(_V8I32, [_V8I32, _V8I32, _V8I32]),
            "llvm.x86.avx512.vpdpbusd.256",
        )
        return builder.call(vnni, [total, builder.bitcast(unsigned, _V8I32),
                                   builder.bitcast(signed, _V8I32)])  # fmt: skip
    v32i8, v16i16 = ir.VectorType(_I8, 32), ir.VectorType(ir.IntType(16), 16)
    pairs = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw"
    )
    quads = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V8I32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd"
    )
    summed = builder.call(pairs, [unsigned, signed])
    return builder.add(total, builder.call(quads, [summed, ir.Constant(v16i16, [1] * 16)]))


X8_TOKENS = 4  # activation rows the 8-row kernels take per pass over a block (prompts)


def _trap(context: Any, builder: Any) -> Any:
    """Code for a host without the instructions: compiled into callers, never run there."""
    void = ir.FunctionType(ir.VoidType(), [])
    builder.call(cgutils.get_or_insert_function(builder.module, void, "llvm.trap"), [])
    return context.get_dummy_value()


def _rows_2d(context: Any, builder: Any, ty: Any, value: Any, element: Any) -> Any:
    """A function (row, column) -> pointer to that element of a C-contiguous 2-D array."""
    array = context.make_array(ty)(context, builder, value)
    row_stride = cgutils.unpack_tuple(builder, array.strides, 2)[0]
    data = builder.bitcast(array.data, ir.PointerType(_I8))

    def at(row: Any, column: Any) -> Any:
        start = builder.gep(data, [builder.mul(row, row_stride)])
        return builder.gep(builder.bitcast(start, ir.PointerType(element)), [column])

    return at


def _is_rows(ty: Any) -> bool:
    return isinstance(ty, types.Array) and ty.ndim == 2 and ty.layout == "C"


def _x_four(builder: Any, x_row: Any, element: int) -> Any:
    """Activations element..element + 3 of a row (an i8 pointer) in every 32-bit lane."""
    pointer = builder.bitcast(
        builder.gep(x_row, [ir.Constant(_I32, element)]), ir.PointerType(_I32)
    )
    four = builder.load(pointer)
    four.align = 1
    return builder.bitcast(_splat(builder, four, 8, _I32), ir.VectorType(_I8, 32))


def _halves(builder: Any, base: Any, at: int) -> Any:
    """8 f16 at byte `at` of `base` as <8 x float>."""
    pointer = builder.bitcast(builder.gep(base, [ir.Constant(_I32, at)]),
                              ir.PointerType(ir.VectorType(ir.HalfType(), 8)))  # fmt: skip
    loaded = builder.load(pointer)
    loaded.align = 1
    return builder.fpext(loaded, ir.VectorType(ir.FloatType(), 8))


@intrinsic
def block_x8(
    typingctx: Any, acc: Any, w: Any, w_at: Any, offset: Any, layout: Any, xq: Any, xd: Any,
    xs: Any, xsum: Any, t: Any, b: Any, tokens: Any, variant: Any,
) -> Any:  # fmt: skip
    """One repacked block of 8 rows at w[w_at] (8 f16 d; X8_Q4_MIN: 8 f16 m; then the levels in
    chunks of 8 rows × 4 bytes: X8_Q4 and X8_Q4_MIN 4 chunks of nibbles, the low ones levels
    0-15; X8_Q8 8 chunks of a byte a level, unsigned) times block b of activation rows t ..
    t + tokens - 1 (xq [T, K] levels, xd [T, K/32] scales, xs q8_1's sums, xsum the blocks' level
    sums; C-contiguous): for each row i and weight row r, acc[8i + r] += (d_r·xd)·(Σ level·x −
    offset·xsum), then acc[8i + r] += m_r·xs, in that order, as the row-by-row kernel adds them.
    Each chunk is loaded and unpacked once for the `tokens` rows."""
    kind = getattr(variant, "literal_value", None)
    packing = getattr(layout, "literal_value", None)
    count = _literal(tokens)
    arrays = (xq, xd, xs, xsum)
    if None in (kind, packing, count) or not (_is_row(w) and all(map(_is_rows, arrays))):
        return None
    minimum = packing == X8_Q4_MIN

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        if kind == X8_NONE:
            return _trap(context, builder)
        acc_p, w_arr, w_at, offset, _, xq, xd, xs, xsum, t, b, _, _ = args
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        base = _byte_pointer(context, builder, signature.args[1], w_arr, w_at)
        i64 = ir.IntType(64)
        t = context.cast(builder, t, signature.args[9], types.int64)
        b = context.cast(builder, b, signature.args[10], types.int64)
        levels_at = _rows_2d(context, builder, signature.args[5], xq, _I8)
        scale_at = _rows_2d(context, builder, signature.args[6], xd, ir.FloatType())
        min_at = _rows_2d(context, builder, signature.args[7], xs, ir.FloatType())
        sum_at = _rows_2d(context, builder, signature.args[8], xsum, _I32)
        rows = [builder.add(t, ir.Constant(i64, i)) for i in range(count)]
        x_rows = [levels_at(row, builder.mul(b, ir.Constant(i64, 32))) for row in rows]
        qs = 32 if minimum else 16
        totals = [ir.Constant(_V8I32, [0] * 8)] * count
        for c in range(8 if packing == X8_Q8 else 4):
            chunk = _load(builder, builder.gep(base, [ir.Constant(_I32, qs + 32 * c)]), 32)
            if packing == X8_Q8:
                parts = [(chunk, 4 * c)]
            else:
                low = builder.and_(chunk, ir.Constant(chunk.type, [15] * 32))
                high = builder.lshr(chunk, ir.Constant(chunk.type, [4] * 32))
                parts = [(low, 4 * c), (high, 16 + 4 * c)]
            for levels, at in parts:
                for i in range(count):
                    x_four = _x_four(builder, x_rows[i], at)
                    totals[i] = _sum_groups_of_4(builder, totals[i], levels, x_four, kind)
        d = _halves(builder, base, 0)
        m = _halves(builder, base, 16) if minimum else None
        acc_v = builder.bitcast(acc_p, ir.PointerType(f32x8))
        for i, row in enumerate(rows):
            correction = builder.mul(_i32(builder, offset), builder.load(sum_at(row, b)))
            isum = builder.sitofp(builder.sub(totals[i], _splat(builder, correction, 8, _I32)),
                                  f32x8)  # fmt: skip
            x_scale = _splat(builder, builder.load(scale_at(row, b)), 8, ir.FloatType())
            acc_i = builder.gep(acc_v, [ir.Constant(_I32, i)])
            sums = builder.fadd(builder.load(acc_i), builder.fmul(builder.fmul(d, x_scale), isum))
            if minimum:
                x_min = _splat(builder, builder.load(min_at(row, b)), 8, ir.FloatType())
                sums = builder.fadd(sums, builder.fmul(m, x_min))
            builder.store(sums, acc_i)
        return context.get_dummy_value()

    sig = types.none(acc, w, w_at, offset, layout, xq, xd, xs, xsum, t, b, tokens, variant)
    return sig, codegen


# K-quants 8 rows at a time. A super-block's 256 levels are summed in groups (Q4_K's 8 sub-blocks
# of 32, Q6_K's 16 groups of 16), each group's lane sums multiplied by the 8 rows' integer scales
# of that group, all in int32 lanes; only the super-block's two factors are floats.
X8_Q4_K, X8_Q6_K = 3, 4  # repacked super-block layouts (`llmrt_cpu.quant.repack_x8`)
X8_K_BYTES = {X8_Q4_K: 160 + 1024, X8_Q6_K: 144 + 2048}  # bytes of a repacked super-block


class _SuperBlockX8:
    """The code of `block_x8_k`, in parts, for one repacked super-block of 8 weight rows against
    `count` activation rows (`args`: block_x8_k's operands). A lane sum is an <8 x i32> with
    one weight row's sum in each lane; the lists of them have one per activation row."""

    def __init__(
        self, context: Any, builder: Any, signature: Any, args: Any, count: int, kind: int
    ) -> None:
        _, w_arr, w_at, _, xq, xd, xsum, t, b, _, _ = args
        tys = signature.args
        i64 = ir.IntType(64)
        self.builder, self.count, self.kind = builder, count, kind
        self.base = _byte_pointer(context, builder, tys[1], w_arr, w_at)
        t = context.cast(builder, t, tys[7], types.int64)
        self.b = context.cast(builder, b, tys[8], types.int64)
        levels_at = _rows_2d(context, builder, tys[4], xq, _I8)
        self.scale_at = _rows_2d(context, builder, tys[5], xd, ir.FloatType())
        self.sum_at = _rows_2d(context, builder, tys[6], xsum, _I32)
        self.rows = [builder.add(t, ir.Constant(i64, i)) for i in range(count)]
        self.x_rows = [
            levels_at(row, builder.mul(self.b, ir.Constant(i64, 256))) for row in self.rows
        ]
        self.sums_base = builder.mul(self.b, ir.Constant(i64, 16))
        self.zero = ir.Constant(_V8I32, [0] * 8)

    def at(self, offset: int) -> Any:
        """A pointer to byte `offset` of the super-block."""
        return self.builder.gep(self.base, [ir.Constant(_I32, offset)])

    def row_bytes(self, offset: int, signed: bool) -> Any:
        """The 8 rows' bytes at `offset` as <8 x i32>."""
        builder = self.builder
        pointer = builder.bitcast(self.at(offset), ir.PointerType(ir.VectorType(_I8, 8)))
        loaded = builder.load(pointer)
        loaded.align = 1
        return (builder.sext if signed else builder.zext)(loaded, _V8I32)

    def x_sum(self, i: int, group: int) -> Any:
        """Σ of activation row i's group of 16 `group` (from xsum)."""
        group_at = self.builder.add(self.sums_base, ir.Constant(ir.IntType(64), group))
        return self.builder.load(self.sum_at(self.rows[i], group_at))

    def q4_k_sums(self) -> tuple[list[Any], list[Any]]:
        """Q4_K's isum (Σ_g sc_g·Σ level·x) and msum (Σ_g mn_g·Σ x) lane sums, by row."""
        builder, count, zero = self.builder, self.count, self.zero
        isums, msums = [zero] * count, [zero] * count
        for c in range(4):
            low_sums, high_sums = [zero] * count, [zero] * count
            for j in range(8):
                chunk = _load(builder, self.at(160 + 32 * (8 * c + j)), 32)
                low = builder.and_(chunk, ir.Constant(chunk.type, [15] * 32))
                high = builder.lshr(chunk, ir.Constant(chunk.type, [4] * 32))
                for i in range(count):
                    low_x = _x_four(builder, self.x_rows[i], 64 * c + 4 * j)
                    high_x = _x_four(builder, self.x_rows[i], 64 * c + 32 + 4 * j)
                    low_sums[i] = _sum_groups_of_4(builder, low_sums[i], low, low_x, self.kind)
                    high_sums[i] = _sum_groups_of_4(builder, high_sums[i], high, high_x, self.kind)
            for sub, lane_sums in ((2 * c, low_sums), (2 * c + 1, high_sums)):
                scales = self.row_bytes(32 + 8 * sub, False)
                minimums = self.row_bytes(96 + 8 * sub, False)
                for i in range(count):
                    isums[i] = builder.add(isums[i], builder.mul(lane_sums[i], scales))
                    group_sum = builder.add(self.x_sum(i, 2 * sub), self.x_sum(i, 2 * sub + 1))
                    weighted = builder.mul(minimums, _splat(builder, group_sum, 8, _I32))
                    msums[i] = builder.add(msums[i], weighted)
        return isums, msums

    def q6_k_sums(self) -> list[Any]:
        """Q6_K's isum lane sums, by row: Σ_g sc_g·(Σ (level + 32)·x − 32·Σ x)."""
        builder, count = self.builder, self.count
        isums = [self.zero] * count
        for g in range(16):
            lane_sums = [self.zero] * count
            for j in range(4):
                chunk = _load(builder, self.at(144 + 32 * (4 * g + j)), 32)
                for i in range(count):
                    x_four = _x_four(builder, self.x_rows[i], 16 * g + 4 * j)
                    lane_sums[i] = _sum_groups_of_4(builder, lane_sums[i], chunk, x_four, self.kind)
            scales = self.row_bytes(16 + 8 * g, True)
            for i in range(count):
                offset = builder.mul(self.x_sum(i, g), ir.Constant(_I32, 32))
                centred = builder.sub(lane_sums[i], _splat(builder, offset, 8, _I32))
                isums[i] = builder.add(isums[i], builder.mul(centred, scales))
        return isums

    def accumulate(self, acc_p: Any, isums: list[Any], msums: list[Any], dmin: Any) -> None:
        """acc[8i + r] += (d_r·xd)·isum − (dmin_r·xd)·msum for each activation row i."""
        builder = self.builder
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        d = _halves(builder, self.base, 0)
        acc_v = builder.bitcast(acc_p, ir.PointerType(f32x8))
        for i, row in enumerate(self.rows):
            x_scales = _splat(builder, builder.load(self.scale_at(row, self.b)), 8, ir.FloatType())
            scaled = builder.fmul(builder.fmul(d, x_scales), builder.sitofp(isums[i], f32x8))
            mins = builder.fmul(builder.fmul(dmin, x_scales), builder.sitofp(msums[i], f32x8))
            acc_i = builder.gep(acc_v, [ir.Constant(_I32, i)])
            builder.store(builder.fadd(builder.load(acc_i), builder.fsub(scaled, mins)), acc_i)


@intrinsic
def block_x8_k(
    typingctx: Any, acc: Any, w: Any, w_at: Any, layout: Any, xq: Any, xd: Any, xsum: Any,
    t: Any, b: Any, tokens: Any, variant: Any,
) -> Any:  # fmt: skip
    """One repacked K-quant super-block of 8 rows at w[w_at] times q8_K block b of activation
    rows t .. t + tokens - 1 (xq [T, K] levels, xd [T, K/256] scales, xsum [T, K/16] sums of 16;
    C-contiguous): for each row i and weight row r, acc[8i + r] += (d_r·xd)·isum − (dmin_r·xd)·msum,
    as the row-by-row kernel adds them, isum being Σ_g sc_g·Σ level·x and msum Σ_g mn_g·Σ x over
    the weight row's groups g.

    X8_Q4_K: 8 f16 d, 8 f16 dmin, the 6-bit scales [8 sub-blocks][8 rows] and mins (bytes), then
    per 32-byte run c of the stored block, 8 chunks of 8 rows × 4 bytes, whose low nibbles are
    sub-block 2c's levels and high nibbles sub-block 2c + 1's. X8_Q6_K: 8 f16 d, the int8 scales
    [16 groups][8 rows], then per group of 16, 4 chunks of 8 rows × 4 levels + 32 (a byte each);
    the 32 is taken back as 32·Σx per group."""
    kind = getattr(variant, "literal_value", None)
    packing = getattr(layout, "literal_value", None)
    count = _literal(tokens)
    if None in (kind, count) or packing not in (X8_Q4_K, X8_Q6_K):
        return None
    if not (_is_row(w) and all(map(_is_rows, (xq, xd, xsum)))):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        if kind == X8_NONE:
            return _trap(context, builder)
        block = _SuperBlockX8(context, builder, signature, args, count, kind)
        if packing == X8_Q4_K:
            isums, msums = block.q4_k_sums()
            dmin = _halves(builder, block.base, 16)
        else:
            isums, msums = block.q6_k_sums(), [block.zero] * count
            dmin = ir.Constant(ir.VectorType(ir.FloatType(), 8), [0.0] * 8)
        block.accumulate(args[0], isums, msums, dmin)
        return context.get_dummy_value()

    sig = types.none(acc, w, w_at, layout, xq, xd, xsum, t, b, tokens, variant)
    return sig, codegen


# ---- a prompt's attention: 16 keys' scores, and probability-weighted value rows ---------------
#
# The decode kernel sums each score in 16 lanes (the head's elements i ≡ l mod 16 in lane l), then
# the lanes in order. For 16 keys at once, with the keys transposed (element i of 16 keys one
# vector), lane l of all 16 scores is one vector: the same sums, in the same order, 16 scores a
# pass. Likewise a value column block's weighted sum over the cells is one vector, kept in a
# register across the cells.
_F32_IR = ir.FloatType()
_V16F = ir.VectorType(_F32_IR, 16)


def _as_i64(context: Any, builder: Any, value: Any, ty: Any) -> Any:
    return context.cast(builder, value, ty, types.int64)


def _f32_vector_at(context: Any, builder: Any, ty: Any, array: Any, index: Any) -> Any:
    pointer = _typed_pointer(context, builder, ty, array, index, _F32_IR)
    return builder.bitcast(pointer, ir.PointerType(_V16F))


@intrinsic
def score_tile(
    typingctx: Any, sums: Any, queries: Any, q_at: Any, keys_t: Any, k_at: Any, stride: Any,
    blocks: Any,
) -> Any:  # fmt: skip
    """For 16 keys j: sums[j] = Σ_l (Σ_b queries[q_at + 16b + l]·keys_t[k_at + (16b + l)·stride
    + j]), b < blocks, the inner sums over b first (in order, from 0.0), then the 16 of them in
    order from 0.0: what the decode kernel's lanes give for each key. keys_t: the keys transposed
    (row i holds element i of consecutive keys, `stride` floats apart); sums: 16 floats on the
    stack (a pointer)."""
    if not (isinstance(sums, types.CPointer) and _is_row(queries) and _is_row(keys_t)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        sums, queries, q_at, keys_t, k_at, stride, blocks = args
        i64 = ir.IntType(64)
        tys = signature.args
        q_at = _as_i64(context, builder, q_at, tys[2])
        k_at = _as_i64(context, builder, k_at, tys[4])
        stride = _as_i64(context, builder, stride, tys[5])
        lanes = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, [0.0] * 16))
                 for _ in range(16)]  # fmt: skip
        with cgutils.for_range(builder, _as_i64(context, builder, blocks, tys[6])) as loop:
            first = builder.mul(loop.index, ir.Constant(i64, 16))
            for lane in range(16):
                element = builder.add(first, ir.Constant(i64, lane))
                query_at = builder.add(q_at, element)
                query = builder.load(
                    _typed_pointer(context, builder, tys[1], queries, query_at, _F32_IR)
                )
                at = builder.add(k_at, builder.mul(element, stride))
                keys = builder.load(_f32_vector_at(context, builder, tys[3], keys_t, at))
                keys.align = 4
                product = builder.fmul(_splat(builder, query, 16, _F32_IR), keys)
                builder.store(builder.fadd(builder.load(lanes[lane]), product), lanes[lane])
        total = ir.Constant(_V16F, [0.0] * 16)
        for lane in lanes:
            total = builder.fadd(total, builder.load(lane))
        builder.store(total, builder.bitcast(sums, ir.PointerType(_V16F))).align = 4
        return context.get_dummy_value()

    return types.none(sums, queries, q_at, keys_t, k_at, stride, blocks), codegen


@intrinsic
def weighted_rows(
    typingctx: Any, out: Any, out_at: Any, probs: Any, cells: Any, n_cells: Any, values: Any,
    base: Any, stride: Any, blocks: Any,
) -> Any:  # fmt: skip
    """out[out_at + j] = Σ_c probs[c]·values[base + cells[c]·stride + j] for j < 16·blocks
    (`blocks` a constant), the cells c < n_cells in order, from 0.0: each column's sum kept in a
    register across the cells."""
    count = _literal(blocks)
    if count is None or not all(map(_is_row, (out, probs, cells, values))):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        out, out_at, probs, cells, n_cells, values, base, stride, _ = args
        i64 = ir.IntType(64)
        tys = signature.args
        out_at = _as_i64(context, builder, out_at, tys[1])
        base = _as_i64(context, builder, base, tys[6])
        stride = _as_i64(context, builder, stride, tys[7])
        sums = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, [0.0] * 16))
                for _ in range(count)]  # fmt: skip
        with cgutils.for_range(builder, _as_i64(context, builder, n_cells, tys[4])) as loop:
            p = builder.load(_typed_pointer(context, builder, tys[2], probs, loop.index, _F32_IR))
            cell = builder.load(_typed_pointer(context, builder, tys[3], cells, loop.index, i64))
            weights = _splat(builder, p, 16, _F32_IR)
            row = builder.add(base, builder.mul(cell, stride))
            for b, total in enumerate(sums):
                at = builder.add(row, ir.Constant(i64, 16 * b))
                value = builder.load(_f32_vector_at(context, builder, tys[5], values, at))
                value.align = 4
                builder.store(
                    builder.fadd(builder.load(total), builder.fmul(weights, value)), total
                )
        for b, total in enumerate(sums):
            at = builder.add(out_at, ir.Constant(i64, 16 * b))
            builder.store(
                builder.load(total), _f32_vector_at(context, builder, tys[0], out, at)
            ).align = 4
        return context.get_dummy_value()

    return types.none(out, out_at, probs, cells, n_cells, values, base, stride, blocks), codegen
