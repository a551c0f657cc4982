"""Lowering a graph to Vulkan dispatches (``Lowering``): each node becomes zero or more
dispatches over ``View``s of storage (views, reshapes and permutes become none: they only change
how later dispatches address the same storage); activations get byte ranges of one arena, reused
once their last reader has run; every shape, offset and stride goes in push constants.

Fusions: the shared ones (a norm's weight, a residual add) arrive as fused nodes from
core/lower; this backend's own (fusions.py) make producers write q8 blocks, leave them to the
integer mat-vec's prologue (matvec_q8p), or move ropes and cache writes into its epilogue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt import device
from llmrt.errors import UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Graph, Op, Tensor
from llmrt.ir.graph import contiguous_strides
from llmrt.lower import ALIGN, Arena, Storage, View, alias, fuse
from llmrt.lower.arena import aligned
from llmrt_vulkan.fusions import (
    MAX_T_MATVEC,
    PROLOGUE_FLOATS,
    Q8_TYPES,
    attn_rows,
    attn_splits,
    fusable,
    plan_fusions,
    prologue_small,
)  # fmt: skip
from llmrt_vulkan.runtime import Buffer, Runtime

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
MATVEC_ROWS = 4  # weight rows per workgroup of matvec.comp
PROLOGUE_ROWS = 8  # weight rows per workgroup of matvec_q8p (the PROLOGUE variant)
# A matvec_q8p dispatch has at most PROLOGUE_WGS workgroups, each taking every PROLOGUE_WGS-th
# group of rows (measured best at 256-512: BENCHMARKS.md).
PROLOGUE_WGS = 512
# matvec_q8p's push constants: the mat-vec's, the prologue's, the epilogue's (rope, cache rows)
Q8P_PUSH = "<14IfI9If"
Q8P_EMODE = 16  # index of emode in them
# ggml type -> the TYPE specialization constant of quant.glsl
TYPE_CODES = {
    GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.BF16: 2, GGMLType.Q4_0: 3, GGMLType.Q4_1: 4,
    GGMLType.Q5_0: 5, GGMLType.Q5_1: 6, GGMLType.Q8_0: 7, GGMLType.Q4_K: 8, GGMLType.Q5_K: 9,
    GGMLType.Q6_K: 10,
}  # fmt: skip
ITEMSIZE = {F32: 4, F16: 2, I32: 4}
NP_TYPES = {F32: np.float32, F16: np.float16, I32: np.int32}
ELTWISE = {Op.CONT: 0, Op.CPY: 0, Op.ADD: 1, Op.MUL: 2, Op.SCALE: 3, Op.SILU: 4, Op.GELU: 5,
           Op.SWIGLU: 6, Op.GEGLU: 7}  # fmt: skip


@dataclass
class VulkanWeight:
    """A weight on the device, in its ggml blocks."""

    buf: Buffer
    type: GGMLType
    shape: tuple[int, ...]
    row_nbytes: int


class VulkanState(device.Buffer):
    """A tensor `offset` bytes into a runtime buffer: a state (a KV cache), or where a program
    takes an input or leaves an output."""

    def __init__(self, dev: device.Device, rt: Runtime, buf: Buffer, shape: tuple[int, ...],
                 dtype: GGMLType, offset: int = 0) -> None:  # fmt: skip
        super().__init__(dev, shape, dtype)
        self.rt, self.buf, self.offset = rt, buf, offset

    def write(self, data: Any) -> None:
        host = np.ascontiguousarray(data, NP_TYPES[self.dtype]).reshape(self.shape)
        self.rt.write(self.buf, host, self.offset)

    def read(self) -> np.ndarray:
        raw = self.rt.read(self.buf, self.offset, self.nbytes)
        return raw.view(NP_TYPES[self.dtype]).reshape(self.shape)

    def copy_from(self, src: device.Buffer) -> bool:
        if not isinstance(src, VulkanState) or src.rt is not self.rt:
            return False
        self.rt.submit_copy(src.buf, src.offset, self.buf, self.offset, self.nbytes)
        return True


@dataclass
class Dispatch:
    shader: str
    spec: tuple[int, ...]
    bindings: list[tuple[Storage, int]]  # storage, byte offset into it where the binding starts
    push_format: str
    push: tuple[Any, ...]
    groups: tuple[int, int, int]
    reads: list[Storage] = field(default_factory=list)
    writes: list[Storage] = field(default_factory=list)


def _as(node: Tensor, v: View) -> View:
    """Node's shape, contiguous, at v's elements (a cache written in place)."""
    return View(v.storage, v.offset, node.shape, contiguous_strides(node.shape), v.dtype)


def _ggml4(values: tuple[int, ...], fill: int) -> tuple[int, int, int, int]:
    rev = tuple(reversed(values))
    return (*rev, *(fill,) * (4 - len(rev)))  # type: ignore[return-value]


class Lowering:
    """The dispatches, storages and constant tables of one graph, planned for runtime `rt`."""

    def __init__(self, rt: Any, graph: Graph, bindings: Mapping[str, Any]) -> None:
        self.rt = rt
        self.dispatches: list[Dispatch] = []
        self.constants: list[Buffer] = []  # small tables made at compile time (rope frequencies)
        self._arena = Arena()
        self._weights: dict[int, VulkanWeight] = {}
        self._mat_vecs: dict[int, list[tuple[Dispatch, int]]] = {}  # patchable mat-vec dispatches
        self._pro: dict[int, dict[str, Any]] = {}  # id(storage) -> the prologue that makes it
        self._rope_pending: dict[int, tuple[Tensor, list[View]]] = {}
        self._epi_pending: dict[int, Dispatch] = {}  # rope node id -> mat-vec dispatch
        # q8 copies of activations, by the storage they were made from (freed with it)
        self._q8_of: dict[int, dict[tuple[int, int], Storage]] = {}
        self._owned: dict[int, Storage] = {}
        graph = fuse(graph, lambda node: fusable(node, rt.cpu))
        self.f = plan_fusions(graph, rt.cpu)
        refs = self._inputs(graph)
        for i, node in enumerate(graph.nodes):
            self._temps: list[Storage] = []
            if node.op is not Op.INPUT:
                refs[id(node)] = self._value(graph, node, refs, bindings)
            for store in self._temps:
                self._release(store)
            for r in self.f.dying.get(i, ()):
                if r in self._owned:
                    store = self._owned.pop(r)
                    self._release(store)
                    for q8 in self._q8_of.pop(id(store), {}).values():
                        self._release(q8)
        self.outputs = {name: refs[id(t)] for name, t in graph.outputs.items()}

    @property
    def arena_peak(self) -> int:
        return self._arena.peak

    def _inputs(self, graph: Graph) -> dict[int, View]:
        """One region of the inputs buffer each."""
        refs: dict[int, View] = {}
        self.inputs: list[tuple[str, View, tuple[int, ...], GGMLType]] = []
        size = 0
        for node in graph.nodes:
            if node.op is Op.INPUT:
                nbytes = node.n_elements * ITEMSIZE[node.dtype]
                refs[id(node)] = View(Storage("inputs", nbytes, offset=size), 0, node.shape,
                                      node.strides, node.dtype)  # fmt: skip
                size += aligned(nbytes)
                self.inputs.append((node.key, refs[id(node)], node.shape, node.dtype))
        self.inputs_size = max(size, 16)
        return refs

    def _value(self, graph: Graph, node: Tensor, refs: dict[int, View], bindings) -> View:
        if node.op in (Op.WEIGHT, Op.STATE):
            bound = bindings.get(node.key)
            if bound is None:
                raise UnsupportedOp(f"graph {graph.name!r} needs '{node.key}', not bound")
            store = Storage("buffer", bound.buf.size, offset=0, buf=bound.buf)
            if node.op is Op.WEIGHT:
                self._weights[id(node)] = bound
                return View(store, 0, node.shape, node.strides, bound.type)
            return View(store, 0, node.shape, node.strides, node.dtype)
        out = self._lower(node, [refs[id(s)] for s in node.srcs])
        if out.storage.kind == "arena" and out.storage in self._temps:
            self._temps.remove(out.storage)
            self._owned[id(node)] = out.storage
        return out

    def _alloc(self, nbytes: int) -> Storage:
        size = aligned(nbytes)
        return Storage("arena", size, offset=self._arena.alloc(size))

    def _release(self, store: Storage) -> None:
        self._arena.release(store.offset, store.nbytes)

    def _new(self, shape: tuple[int, ...], dtype: GGMLType) -> View:
        n = math.prod(shape)
        store = self._alloc(n * ITEMSIZE[dtype])
        self._temps.append(store)
        return View(store, 0, tuple(shape), contiguous_strides(shape), dtype)

    def _q8(self, b: View) -> tuple[Storage, int]:
        """b (contiguous f32, rows a multiple of 32 long) in q8 blocks (quantize_q8.comp): the
        store and the byte offset of its scales. Made once per value: q, k and v projections
        share it."""
        key = (b.offset, b.n)
        owner = (
            b.storage if b.storage.kind == "arena" and b.storage in self._owned.values() else None
        )
        qs_bytes = -(-b.n // ALIGN) * ALIGN  # scales follow the int8 values, aligned
        if key in self._q8_of.get(id(b.storage), {}):  # written with b (norm, swiglu)
            return self._q8_of[id(b.storage)][key], qs_bytes
        if owner is not None and key in self._q8_of.get(id(owner), {}):
            return self._q8_of[id(owner)][key], qs_bytes
        nblocks = b.n // 32
        store = self._alloc(qs_bytes + nblocks * 8)
        if owner is not None:
            self._q8_of.setdefault(id(owner), {})[key] = store
        else:
            self._temps.append(store)
        ref = View(store, 0, (store.nbytes // 4,), (1,), F32)
        groups = self._grid(-(-nblocks // 32))
        self._emit(
            "quantize_q8", (),
            [(b.storage, 0), (store, 0), (store, qs_bytes), (b.storage, 0), (b.storage, 0)], "<6I",
            (nblocks, b.offset // 4, groups[0], 0, 0, 0), groups, [b], [ref],
        )  # fmt: skip
        return store, qs_bytes

    def _weight_of(self, node: Tensor) -> VulkanWeight | None:
        if node.op is Op.WEIGHT:
            return self._weights.get(id(node))
        return None

    # ---- helpers -------------------------------------------------------------------------
    def _emit(self, shader, spec, bindings, fmt, push, groups, reads, writes) -> None:
        stores = [r.storage for r in reads], [w.storage for w in writes]
        self.dispatches.append(Dispatch(shader, spec, bindings, fmt, push, groups, *stores))

    def _grid(self, n_groups: int) -> tuple[int, int, int]:
        x = max(1, min(n_groups, self.rt.max_groups))
        return x, max(1, -(-n_groups // x)), 1

    def _contig(self, ref: View, align4: bool = False) -> View:
        if ref.contiguous and (not align4 or ref.offset % 4 == 0):
            return ref
        out = self._new(ref.shape, ref.dtype)
        self._eltwise(0, ref, None, out)
        return out

    def _eltwise(self, op: int, a: View, b: View | None, out: View, s: float = 0.0) -> None:
        if len(out.shape) > 4:
            raise UnsupportedOp("element-wise ops take at most 4 dimensions")
        ne = _ggml4(out.shape, 1)
        sa = _ggml4(a.strides, 0)
        sb = (0, 0, 0, 0)
        if b is not None:
            # b aligns with a's trailing dimensions; size-1 (or missing) dimensions broadcast
            rank = len(out.shape)
            full = (1,) * (rank - len(b.shape)) + b.shape
            fstr = (0,) * (rank - len(b.strides)) + b.strides
            sb = _ggml4(tuple(0 if d == 1 else st for d, st in zip(full, fstr, strict=True)), 0)
        flags = op | (256 if a.dtype == F16 else 0) | (1024 if out.dtype == F16 else 0)
        flags |= 512 if b is not None and b.dtype == F16 else 0
        n = out.n
        groups = self._grid(-(-n // 512))
        bb = b if b is not None else a
        table = self.rt.gelu_table()
        gelu = Storage("buffer", table.size, offset=0, buf=table)
        self._emit(
            "eltwise", (), [(a.storage, 0), (bb.storage, 0), (out.storage, 0), (gelu, 0)],
            "<12I4IfII",
            (*ne, *sa, *sb, a.offset, bb.offset, out.offset, flags, s, n, groups[0]), groups,
            [a, bb], [out],
        )  # fmt: skip

    # ---- lowering, node by node ----------------------------------------------------------
    def _lower(self, node: Tensor, srcs: list[View]) -> View:
        op = node.op
        if op in (Op.VIEW, Op.RESHAPE):
            return alias(node, self._contig(srcs[0]))
        if op is Op.PERMUTE:
            return alias(node, srcs[0])
        if id(node) in self.f.virtual and op is Op.SWIGLU and all(r.contiguous for r in srcs):
            return self._virtual_ref(node, {"mode": 3, "a": srcs[0], "b": srcs[1]})
        if id(node) in self.f.glu_q8:
            return self._swiglu_q8(node, srcs)
        if op in ELTWISE:
            out = self._new(node.shape, node.dtype)
            b = srcs[1] if len(srcs) > 1 else None
            self._eltwise(ELTWISE[op], srcs[0], b, out, node.params.get("scale", 0.0))
            return out
        emit = EMITTERS.get(op)
        if emit is None:
            raise UnsupportedOp(f"vulkan has no kernel for {op.value}")
        return emit(self, node, srcs)

    def _virtual_ref(self, node: Tensor, pro: dict[str, Any]) -> View:
        """The value of a producer left to its readers' prologues (matvec_q8p): no storage."""
        store = Storage("virtual", 0, offset=0)
        self._pro[id(store)] = pro
        return View(store, 0, node.shape, contiguous_strides(node.shape), F32)

    def _swiglu_q8(self, node: Tensor, srcs: list[View]) -> View:
        """swiglu written as f32 and as q8 blocks for the integer mat-vec reading it."""
        a, b = self._contig(srcs[0], align4=True), self._contig(srcs[1], align4=True)
        out = self._new(node.shape, F32)
        q8, qs_bytes = self._q8_store(out)
        nblocks = out.n // 32
        groups = self._grid(-(-nblocks // 32))
        self._emit(
            "quantize_q8", (),
            [(a.storage, 0), (q8, 0), (q8, qs_bytes), (b.storage, 0), (out.storage, 0)], "<6I",
            (nblocks, a.offset // 4, groups[0], 1, b.offset // 4, out.offset // 4), groups,
            [a, b], [out, View(q8, 0, (q8.nbytes // 4,), (1,), F32)],
        )  # fmt: skip
        return out

    def _q8_store(self, out: View) -> tuple[Storage, int]:
        """A q8 copy's store for `out` (a value being made now), found by _q8 later."""
        qs_bytes = -(-out.n // ALIGN) * ALIGN
        q8 = self._alloc(qs_bytes + out.n // 32 * 8)
        self._q8_of.setdefault(id(out.storage), {})[(out.offset, out.n)] = q8
        return q8, qs_bytes

    def _op_get_rows(self, node: Tensor, srcs: list[View]) -> View:
        table, ids = srcs
        ids = self._contig(ids)
        w = self._weight_of(node.srcs[0])
        k = node.shape[1]
        out = self._new(node.shape, F32)
        if w is not None:
            code, row_bytes, table_byte = TYPE_CODES[w.type], w.row_nbytes, 0
        else:
            table = self._contig(table)
            code = TYPE_CODES[table.dtype]
            row_bytes = k * ITEMSIZE[table.dtype]
            table_byte = table.offset * ITEMSIZE[table.dtype]
        n4 = node.n_elements // 4
        groups = self._grid(-(-n4 // 256))
        self._emit(
            "get_rows", (code,), [(table.storage, 0), (ids.storage, 0), (out.storage, 0)], "<7I",
            (k, row_bytes, table_byte, ids.offset, out.offset // 4, n4, groups[0]), groups,
            [table, ids], [out],
        )  # fmt: skip
        return out

    def _op_set_rows(self, node: Tensor, srcs: list[View]) -> View:
        dst, ids, src = srcs
        ids = self._contig(ids)
        width = math.prod(dst.shape[1:])
        d = self._epi_pending.pop(id(node.srcs[2]), None)  # a rope in a mat-vec's epilogue
        if d is None and id(node) in self.f.epi_cache and src.contiguous:
            d = self._epi_dispatch(self.f.epi_cache[id(node)])  # the mat-vec's rows, as they are
            if d is not None:
                self._patch_push(d, Q8P_EMODE + 3, (2,))  # dim: any even number
        f16 = dst.dtype == F16
        if d is not None and (not f16 or (dst.offset % 2 == 0 and width % 2 == 0)):
            # the mat-vec writes its rows into the cache rows
            emode = d.push[Q8P_EMODE] | 2 | (4 if f16 else 0)
            self._patch_push(d, Q8P_EMODE, (emode, dst.offset, width))
            self._patch_push(d, Q8P_EMODE + 7, (ids.offset,))
            d.bindings[3] = (dst.storage, 0)
            d.bindings[10] = (ids.storage, 0)
            d.reads.append(ids.storage)
            d.writes = [dst.storage]
            return _as(node, dst)
        pending = self._rope_pending.pop(id(node.srcs[2]), None)
        if pending is not None:
            rope, rope_srcs = pending
            self._emit_rope(
                rope, rope_srcs, dst.storage, dst.offset, dst, ids, width, dst.dtype == F16
            )
            return _as(node, dst)
        src = self._contig(src)
        rows = src.shape[0]
        f16 = dst.dtype == F16
        groups = self._grid(-(-(rows * ((width + 1) // 2)) // 256))
        self._emit(
            "set_rows", (), [(src.storage, 0), (ids.storage, 0), (dst.storage, 0)], "<7I",
            (width, rows, src.offset, ids.offset, dst.offset, int(f16), groups[0]), groups,
            [src, ids, dst], [dst],
        )  # fmt: skip
        return _as(node, dst)

    def _rows_op(self, node: Tensor, x: View) -> tuple[int, int]:
        return node.shape[-1], math.prod(node.shape[:-1])

    def _op_rms_norm(self, node: Tensor, srcs: list[View], mode: int = 0) -> View:
        w = srcs[1] if len(srcs) > 1 else None  # the fused weight (core/lower/fuse.py)
        if id(node) in self.f.virtual and srcs[0].contiguous:
            pro = {"mode": 2 | (256 if mode & 1 else 0) | (512 if w else 0), "a": srcs[0],
                   "b": w or srcs[0], "eps": node.params["eps"]}  # fmt: skip
            return self._virtual_ref(node, pro)
        x = self._contig(srcs[0])
        n, rows = self._rows_op(node, x)
        out = self._new(node.shape, F32)
        groups = self._grid(rows)
        q8: list[tuple[Storage, int]] = [(out.storage, 0), (out.storage, 0)]
        writes = [out]
        if id(node) in self.f.norm_q8:
            store, qs_bytes = self._q8_store(out)
            q8 = [(store, 0), (store, qs_bytes)]
            writes.append(View(store, 0, (store.nbytes // 4,), (1,), F32))
            mode |= 4
        self._emit(
            "norm", (), [(x.storage, 0), (out.storage, 0), ((w or x).storage, 0), *q8], "<5IfII",
            (n, rows, x.offset, out.offset, mode | (2 if w else 0), node.params["eps"], groups[0],
             w.offset if w else 0), groups, [x, w] if w else [x], writes,
        )  # fmt: skip
        return out

    def _op_norm(self, node: Tensor, srcs: list[View]) -> View:
        return self._op_rms_norm(node, srcs, mode=1)

    def _op_soft_max(self, node: Tensor, srcs: list[View]) -> View:
        x = self._contig(srcs[0])
        mask = self._contig(srcs[1]) if len(srcs) > 1 else None
        n, rows = self._rows_op(node, x)
        out = self._new(node.shape, F32)
        groups = self._grid(rows)
        m = mask if mask is not None else x
        mask_rows = math.prod(mask.shape[:-1]) if mask is not None else 0
        self._emit(
            "softmax", (), [(x.storage, 0), (m.storage, 0), (out.storage, 0)], "<6IfI",
            (n, rows, x.offset, m.offset, out.offset, mask_rows, node.params["scale"], groups[0]),
            groups, [x, m], [out],
        )  # fmt: skip
        return out

    def _op_argmax(self, node: Tensor, srcs: list[View]) -> View:
        x = self._contig(srcs[0])
        n, rows = x.shape[-1], math.prod(x.shape[:-1])
        out = self._new(node.shape, I32)
        groups = self._grid(rows)
        self._emit("argmax", (), [(x.storage, 0), (out.storage, 0)], "<5I",
                   (n, rows, x.offset, out.offset, groups[0]), groups, [x], [out])  # fmt: skip
        return out

    def _epi_dispatch(self, mm: Tensor | None) -> Dispatch | None:
        """The one matvec_q8p dispatch of mat-vec `mm` with no epilogue yet, if it is one."""
        patch = self._mat_vecs.get(id(mm)) if mm is not None else None
        if not patch or len(patch) != 1:
            return None
        d = patch[0][0]
        return d if d.shader.startswith("matvec_q8p") and d.push[Q8P_EMODE] == 0 else None

    def _patch_push(self, d: Dispatch, start: int, values: tuple[Any, ...]) -> None:
        push = list(d.push)
        push[start : start + len(values)] = values
        d.push = tuple(push)

    def _op_rope(self, node: Tensor, srcs: list[View]) -> View:
        d = self._epi_dispatch(self.f.epi_rope.get(id(node)))
        if d is not None and all(r.contiguous for r in srcs):
            # the mat-vec ropes its rows in its epilogue: its output holds the rope's value
            p, dim = node.params, node.shape[2]
            x, pos = srcs[0], srcs[1]
            factors = srcs[2] if len(srcs) > 2 else None
            table = self._rope_table(p)
            f = factors if factors is not None else pos
            d.bindings[7:10] = [(pos.storage, 0), (table, 0), (f.storage, 0)]
            d.reads += [pos.storage, table, f.storage]
            # emode, eo, width, dim, n_dims, opos, off, oi, has_factors, attn_factor
            epi = (1, 0, 0, dim, p["n_dims"], pos.offset, f.offset, 0, int(factors is not None),
                   p["attn_factor"])  # fmt: skip
            self._patch_push(d, Q8P_EMODE, epi)
            if id(node) in self.f.rope_into:
                self._epi_pending[id(node)] = d  # the set_rows names the cache rows
            return View(x.storage, x.offset, node.shape, contiguous_strides(node.shape), F32)
        if id(node) in self.f.rope_into and all(r.contiguous for r in srcs):
            # written straight into the cache rows by the set_rows that reads it
            self._rope_pending[id(node)] = (node, srcs)
            return srcs[0]  # not read: the set_rows is this value's only reader
        out = self._new(node.shape, F32)
        self._emit_rope(node, srcs, out.storage, out.offset, out, None, 0)
        return out

    def _rope_table(self, p: Mapping[str, Any]) -> Storage:
        """inv_freq[i] = freq_base^(-2i/n_dims) * freq_scale, computed in double precision."""
        half = p["n_dims"] // 2
        inv = p["freq_base"] ** (-np.arange(half, dtype=np.float64) * 2.0 / p["n_dims"])
        table = self.rt.buffer(max(16, half * 4))
        self.rt.write(table, (inv * p["freq_scale"]).astype(np.float32))
        self.constants.append(table)
        return Storage("buffer", table.size, offset=0, buf=table)

    def _emit_rope(self, node, srcs, dst, od, write, ids, width, f16=False) -> None:
        """rope.comp: into out (ids None) or into rows ids of a cache `width` elements wide."""
        p = node.params
        x, pos = self._contig(srcs[0]), self._contig(srcs[1])
        factors = self._contig(srcs[2]) if len(srcs) > 2 else None
        t, h, d = node.shape
        tstore = self._rope_table(p)
        f = factors if factors is not None else x
        i = ids if ids is not None else x
        flags = (0 if ids is None else 1) | (2 if f16 else 0)
        groups = self._grid(-(-(t * h * (d // 2)) // 256))
        self._emit(
            "rope", (),
            [(x.storage, 0), (pos.storage, 0), (tstore, 0), (f.storage, 0), (dst, 0),
             (i.storage, 0)],
            "<10IfI3I",
            (t, h, d, p["n_dims"], x.offset, pos.offset, f.offset, od, int(p["mode"] == ROPE_NEOX),
             int(factors is not None), p["attn_factor"], groups[0], flags, i.offset, width),
            groups, [x, pos, f, i], [write],
        )  # fmt: skip

    def _op_mul_mat(self, node: Tensor, srcs: list[View]) -> View:
        a, b = srcs[:2]
        w = self._weight_of(node.srcs[0])
        out = self._new(node.shape, F32)
        if w is not None and len(w.shape) == 2:
            self._weight_mul_mat(w, a, self._contig(b, align4=True), out, id(node))
            if len(srcs) == 3:  # the fused residual (core/lower/fuse.py): in the epilogue
                y = srcs[2]
                for d, r0 in self._mat_vecs[id(node)]:
                    d.bindings[4] = (y.storage, 0)
                    self._patch_push(d, 7, (d.push[7] | 1, y.offset + r0))
                    d.reads.append(y.storage)
            return out
        a, b = self._contig(a), self._contig(b)
        m, k = a.shape[-2], a.shape[-1]
        t = b.shape[-2]
        ba, bb = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
        n = out.n
        groups = self._grid(-(-n // 256))
        self._emit(
            "matmul_batched", (), [(a.storage, 0), (b.storage, 0), (out.storage, 0)], "<11I",
            (m, t, k, ba, bb, a.offset, b.offset, out.offset, int(a.dtype == F16), n, groups[0]),
            groups, [a, b], [out],
        )  # fmt: skip
        return out

    def _weight_mul_mat(self, w: VulkanWeight, a: View, b: View, out: View, node_id: int) -> None:
        m, k = w.shape
        t = b.n // k
        code = TYPE_CODES[w.type]
        round16 = int(w.type == F16)
        # rows per dispatch: a weight larger than one binding may address is split by rows
        chunk = m
        if w.row_nbytes * m > self.rt.max_range:
            chunk = max(256, (self.rt.max_range // w.row_nbytes) // 256 * 256)
        if w.type in Q8_TYPES and k % 32 == 0 and (self.rt.cpu or t <= MAX_T_MATVEC):
            # integer mat-vec on q8 activations, as ggml rounds them
            pro = self._pro.get(id(b.storage))
            if b.storage.kind == "virtual" and pro is None:
                raise AssertionError("a virtual value without its prologue")
            if pro is None and self._plain_prologue(b, m, k, t):
                pro = {"mode": 1, "a": b, "b": b}
            if pro is not None:  # the workgroups make the q8 blocks themselves
                self._emit_q8p(w, a, pro, out, m, k, t, chunk, node_id)
                return
            qstore, qs_off = self._q8(b)
            name = (
                "matvec_q8" + ("_dot" if self.rt.int_dot else "") + ("_rows" if self.rt.cpu else "")
            )
            qref = View(qstore, 0, (qstore.nbytes // 4,), (1,), F32)
            patch = self._mat_vecs.setdefault(node_id, [])
            for r0 in range(0, m, chunk):
                rows = min(chunk, m - r0)
                if self.rt.cpu:
                    groups = (-(-rows // 64), -(-t // MAX_T_MATVEC), 1)
                else:
                    groups = self._grid(-(-rows // MATVEC_ROWS))
                self._emit(
                    name, (code,),
                    [(a.storage, r0 * w.row_nbytes), (qstore, 0), (qstore, qs_off),
                     (out.storage, 0), (out.storage, 0)],
                    "<9I", (k, w.row_nbytes, rows, t, out.offset + r0, m, groups[0], 0, 0),
                    groups, [a, qref], [out],
                )  # fmt: skip
                patch.append((self.dispatches[-1], r0))
            return
        for r0 in range(0, m, chunk):
            rows = min(chunk, m - r0)
            wb = (a.storage, r0 * w.row_nbytes)
            if self.rt.cpu:
                groups = (-(-rows // 64), -(-t // MAX_T_MATVEC), 1)
                self._emit(
                    "matvec_rows", (code,), [wb, (b.storage, 0), (out.storage, 0)], "<9I",
                    (k, w.row_nbytes, rows, t, b.offset // 4, out.offset + r0, m, round16,
                     groups[0]), groups, [a, b], [out],
                )  # fmt: skip
                continue
            tiled = t > MAX_T_MATVEC and k % 16 == 0
            if tiled:
                groups = (-(-rows // 64), -(-t // 64), 1)
                self._emit(
                    "matmul", (code,), [wb, (b.storage, 0), (out.storage, 0)], "<9I",
                    (k, w.row_nbytes, rows, t, b.offset // 4, out.offset + r0, m, round16,
                     groups[0]), groups, [a, b], [out],
                )  # fmt: skip
                continue
            for t0 in range(0, t, MAX_T_MATVEC):
                nt = min(MAX_T_MATVEC, t - t0)
                groups = self._grid(-(-rows // MATVEC_ROWS))
                self._emit(
                    "matvec", (code,), [wb, (b.storage, 0), (out.storage, 0)], "<9I",
                    (k, w.row_nbytes, rows, nt, (b.offset + t0 * k) // 4,
                     out.offset + r0 + t0 * m, m, round16, groups[0]),
                    groups, [a, b], [out],
                )  # fmt: skip

    def _plain_prologue(self, b: View, m: int, k: int, t: int) -> bool:
        """Whether a mat-vec quantizes its f32 activations itself, not by a quantize_q8 dispatch
        before it: on the GPU kernels, when no q8 copy of them was made already."""
        if self.rt.cpu or b.storage.kind == "virtual" or not prologue_small(m, k, t):
            return False
        if (b.offset, b.n) in self._q8_of.get(id(b.storage), {}):
            return False
        return t * k <= PROLOGUE_FLOATS

    def _emit_q8p(self, w, a, pro, out, m, k, t, chunk, node_id) -> None:
        """matvec_q8p: the integer mat-vec whose workgroups make their q8 blocks from `pro`."""
        name = "matvec_q8p" + ("_dot" if self.rt.int_dot else "")
        x, y = pro["a"], pro["b"]
        patch = self._mat_vecs.setdefault(node_id, [])
        for r0 in range(0, m, chunk):
            rows = min(chunk, m - r0)
            groups = self._grid(max(1, min(-(-rows // PROLOGUE_ROWS), PROLOGUE_WGS)))
            self._emit(
                name, (TYPE_CODES[w.type],),
                [(a.storage, r0 * w.row_nbytes), *[(out.storage, 0)] * 4, (x.storage, 0),
                 (y.storage, 0), *[(out.storage, 0)] * 4],
                Q8P_PUSH,
                (k, w.row_nbytes, rows, t, out.offset + r0, m, groups[0], 0, 0, pro["mode"],
                 x.offset, y.offset, pro.get("dv", 1), pro.get("splits", 1), pro.get("eps", 0.0),
                 groups[0] * groups[1], *(0,) * 9, 1.0),
                groups, [a, x, y], [out],
            )  # fmt: skip
            patch.append((self.dispatches[-1], r0))

    def _op_flash_attn_ext(self, node: Tensor, srcs: list[View]) -> View:
        q = self._contig(srcs[0])
        k, v = srcs[1], srcs[2]
        if k.strides[1:] != (k.shape[2], 1):
            k = self._contig(k)
        if v.strides[1:] != (v.shape[2], 1):
            v = self._contig(v)
        mask = self._contig(srcs[3]) if len(srcs) > 3 else None
        t, hq, dk = q.shape
        s, hkv, dv = v.shape
        flags = int(k.dtype == F16) | int(v.dtype == F16) << 1 | int(mask is not None) << 2
        m = mask if mask is not None else q
        if max(dk, dv) > 256:
            raise UnsupportedOp("vulkan attention takes head sizes up to 256")
        cpu = attn_rows(self.rt.cpu, s, max(dk, dv))
        # on the GPU kernels, a long cache is split over workgroups and the parts merged by
        # attn_combine, or (virtual) in the prologue of the mat-vecs reading the result
        splits, chunk = attn_splits(self.rt.cpu, t, hq, s, max(dk, dv))
        virtual = id(node) in self.f.virtual and splits > 1
        if virtual:
            dst = self._new((t * hq * splits * (dv + 2),), F32)
            self._pro[id(dst.storage)] = {"mode": 4, "a": dst, "b": dst, "dv": dv, "splits": splits}
            out = View(dst.storage, dst.offset, node.shape, contiguous_strides(node.shape), F32)
        else:
            out = self._new(node.shape, F32)
            dst = self._new((t * hq * splits * (dv + 2),), F32) if splits > 1 else out
        groups = self._grid(-(-(t * hq) // 16) if cpu else t * hq * splits)
        spec = () if cpu else (dk, dv, int(k.dtype == F16), int(v.dtype == F16))
        self._emit(
            "flash_attn_rows" if cpu else "flash_attn", spec,
            [(q.storage, 0), (k.storage, 0), (v.storage, 0), (m.storage, 0), (dst.storage, 0)],
            "<14I2fI" if cpu else "<14I2f3I",
            (dk, dv, s, hq, hkv, t, q.offset, k.offset, v.offset, m.offset, dst.offset,
             k.strides[0], v.strides[0], flags, node.params["scale"], node.params["softcap"],
             groups[0], *(() if cpu else (splits, chunk))),
            groups, [q, k, v, m], [dst],
        )  # fmt: skip
        if splits > 1 and not virtual:
            q8 = id(node) in self.f.attn_q8 and dv % 32 == 0
            qb: list[tuple[Storage, int]] = [(out.storage, 0), (out.storage, 0)]
            writes = [out]
            if q8:
                store, qs_bytes = self._q8_store(out)
                qb = [(store, 0), (store, qs_bytes)]
                writes.append(View(store, 0, (store.nbytes // 4,), (1,), F32))
            groups = self._grid(-(-(t * hq * dv // (4 if q8 else 1)) // 256))
            self._emit(
                "attn_combine", (), [(dst.storage, 0), (out.storage, 0), *qb], "<7I",
                (dv, splits, t * hq, dst.offset, out.offset, groups[0], int(q8)), groups, [dst],
                writes,
            )  # fmt: skip
        return out


EMITTERS: dict[Op, Callable[[Lowering, Tensor, list[View]], View]] = {
    Op.GET_ROWS: Lowering._op_get_rows,
    Op.SET_ROWS: Lowering._op_set_rows,
    Op.RMS_NORM: Lowering._op_rms_norm,
    Op.NORM: Lowering._op_norm,
    Op.SOFT_MAX: Lowering._op_soft_max,
    Op.ARGMAX: Lowering._op_argmax,
    Op.ROPE: Lowering._op_rope,
    Op.MUL_MAT: Lowering._op_mul_mat,
    Op.FLASH_ATTN_EXT: Lowering._op_flash_attn_ext,
}
