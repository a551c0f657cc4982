"""Lowering a graph to Vulkan dispatches, and replaying it: ``VulkanProgram``.

At compile time each node becomes zero or more dispatches (views, reshapes and permutes become
none: they only change how later dispatches address the same storage). Values get byte ranges of
one arena buffer, reused once their last reader has run; a barrier goes between two dispatches
only where the second touches memory that one since the last barrier wrote (or writes memory one
read). Descriptor sets are written once, and the whole graph is recorded into one command buffer
with every shape, offset and stride in push constants. ``run`` then copies the inputs in, submits
that command buffer, waits, and reads the outputs: no Vulkan object is made per step. Outputs are
read from cached host memory (copied there at the end of the command buffer unless they already
live in it: a discrete GPU's host-mapped BAR memory is uncached, and reading logits from it cost
milliseconds a step).

Fusions decided at planning: a norm's weight, a residual add, rope into the KV cache rows; on the
GPU kernels the integer mat-vec (matvec_q8p) also makes its q8 activations in a prologue from
what produced them (norm, swiglu, split attention's parts, which then emit nothing) and ropes its
rows and writes them into cache rows in an epilogue (q, k, v).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt.device import Executable
from llmrt.errors import UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Graph, Op, Tensor
from llmrt.ir.graph import contiguous_strides
from llmrt_vulkan.runtime import Buffer, Runtime

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
ALIGN = 256
MAX_T_MATVEC = 8
MATVEC_ROWS = 4  # weight rows per workgroup of matvec.comp
ATTN_MAX_SPLITS = 64  # parts of one head's attention over the KV length, at most
ATTN_ROWS_MAX = 32768  # cache elements a head (keys x head size) for lavapipe's per-row kernel
PROLOGUE_ROWS = 8  # weight rows per workgroup of matvec_q8p (the PROLOGUE variant)
PROLOGUE_BLOCKS = 512  # q8 blocks (t * k / 32) a matvec_q8p workgroup holds in shared memory
# Each matvec_q8p workgroup reads its activations' inputs whole: at most PROLOGUE_FLOATS f32
# values, and only in dispatches of at most PROLOGUE_SMALL rows or activation values (t * k);
# others keep a producer dispatch that writes q8 blocks. On the H100 the prologue (a serial chain
# of loads and barriers, ~12 us for k = 4096) cost the 8B more than the barrier stages it saves
# (tg128 218 with it, 253 without), and paid for 135M (664 against 565) and 1B (674 against 657).
# A dispatch has at most PROLOGUE_WGS workgroups, each taking every PROLOGUE_WGS-th group of rows
# (the 8B: 218 t/s with 256 or 512, 184 with 2048). LLMRT_VULKAN_PROLOGUE_FLOATS=0 turns the
# prologue off (to compare).
PROLOGUE_FLOATS = int(os.environ.get("LLMRT_VULKAN_PROLOGUE_FLOATS", "20480"))
PROLOGUE_SMALL = 2048
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
# weight types the integer mat-vec takes (q8_0 activations in ggml): matvec_q8.comp
Q8_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0})
ELTWISE = {Op.CONT: 0, Op.CPY: 0, Op.ADD: 1, Op.MUL: 2, Op.SCALE: 3, Op.SILU: 4, Op.GELU: 5,
           Op.SWIGLU: 6, Op.GEGLU: 7}  # fmt: skip


@dataclass(eq=False)
class Store:
    """A byte range holding one value: of the arena (``buf`` None until it exists), of the
    inputs buffer, or a whole weight or state buffer."""

    kind: str  # "arena", "inputs", "buffer"
    base: int
    nbytes: int
    buf: Buffer | None = None


@dataclass(eq=False)
class Ref:
    """Where a tensor's elements are: a store, an element offset into it, shape and strides."""

    store: Store
    off: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: GGMLType

    @property
    def contiguous(self) -> bool:
        return self.strides == contiguous_strides(self.shape)

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def span(self) -> tuple[int, int]:
        """First and one-past-last element this view reaches, relative to the store."""
        last = self.off + sum((d - 1) * s for d, s in zip(self.shape, self.strides, strict=True))
        return self.off, last + 1


@dataclass
class VulkanWeight:
    """A weight on the device, in its ggml blocks."""

    buf: Buffer
    type: GGMLType
    shape: tuple[int, ...]
    row_nbytes: int


@dataclass
class VulkanState:
    buf: Buffer
    shape: tuple[int, ...]
    dtype: GGMLType


@dataclass
class Dispatch:
    shader: str
    spec: tuple[int, ...]
    bindings: list[tuple[Store, int]]  # store, byte offset into it where the binding starts
    push_format: str
    push: tuple[Any, ...]
    groups: tuple[int, int, int]
    reads: list[Store] = field(default_factory=list)
    writes: list[Store] = field(default_factory=list)


def _ggml4(values: tuple[int, ...], fill: int) -> tuple[int, int, int, int]:
    rev = tuple(reversed(values))
    return (*rev, *(fill,) * (4 - len(rev)))  # type: ignore[return-value]


class VulkanProgram(Executable):
    def __init__(self, rt: Runtime, graph: Graph, bindings: Mapping[str, Any]) -> None:
        self.rt = rt
        self.dispatches: list[Dispatch] = []
        self.constants: list[Buffer] = []  # small tables made at compile time (rope frequencies)
        self._arena_free: list[tuple[int, int]] = []  # (offset, size) blocks
        self.arena_size = self.arena_peak = 0
        self._weights: dict[int, VulkanWeight] = {}
        self._plan(graph, bindings)
        self._record()

    # ---- arena ---------------------------------------------------------------------------
    def _alloc(self, nbytes: int) -> Store:
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        for i, (off, sz) in enumerate(self._arena_free):
            if sz >= size:
                if sz == size:
                    self._arena_free.pop(i)
                else:
                    self._arena_free[i] = (off + size, sz - size)
                return Store("arena", off, size)
        store = Store("arena", self.arena_size, size)
        self.arena_size += size
        self.arena_peak = max(self.arena_peak, self.arena_size)
        return store

    def _release(self, store: Store) -> None:
        blocks = sorted([*self._arena_free, (store.base, store.nbytes)])
        merged: list[tuple[int, int]] = []
        for off, sz in blocks:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + sz)
            else:
                merged.append((off, sz))
        if merged and merged[-1][0] + merged[-1][1] == self.arena_size:
            self.arena_size = merged.pop()[0]  # give the tail back: the arena stays small
        self._arena_free = merged

    def _new(self, shape: tuple[int, ...], dtype: GGMLType) -> Ref:
        n = math.prod(shape)
        store = self._alloc(n * ITEMSIZE[dtype])
        self._temps.append(store)
        return Ref(store, 0, tuple(shape), contiguous_strides(shape), dtype)

    # ---- planning ------------------------------------------------------------------------
    def _plan(self, graph: Graph, bindings: Mapping[str, Any]) -> None:
        refs: dict[int, Ref] = {}
        # inputs: one region each of the inputs buffer
        self.inputs: list[tuple[str, Ref, tuple[int, ...], GGMLType]] = []
        in_size = 0
        for node in graph.nodes:
            if node.op is Op.INPUT:
                nbytes = node.n_elements * ITEMSIZE[node.dtype]
                store = Store("inputs", in_size, nbytes)
                in_size += max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
                refs[id(node)] = Ref(store, 0, node.shape, node.strides, node.dtype)
                self.inputs.append((node.key, refs[id(node)], node.shape, node.dtype))
        self.inputs_size = max(in_size, 16)
        # the last node reading each value's storage (aliases keep their root alive)
        # a norm whose only reader multiplies it by an f32 vector of its row length: one dispatch
        readers: dict[int, int] = {}
        for node in graph.nodes:
            for src in node.srcs:
                readers[id(src)] = readers.get(id(src), 0) + 1
        for t in graph.outputs.values():
            readers[id(t)] = readers.get(id(t), 0) + 1
        self._fused: set[int] = set()
        self._norms: dict[int, Dispatch] = {}
        for node in graph.nodes:
            if node.op is not Op.MUL or len(node.srcs) != 2:
                continue
            x, w = node.srcs
            bound = bindings.get(w.key) if w.op is Op.WEIGHT else None
            if (
                x.op in (Op.RMS_NORM, Op.NORM) and readers.get(id(x)) == 1
                and x.dtype == F32 and node.dtype == F32 and node.shape == x.shape
                and w.shape == (x.shape[-1],) and bound is not None
                and getattr(bound, "type", None) == F32 and w.strides == (1,)
            ):  # fmt: skip
                self._fused.add(id(node))
        # an ADD of a mat-vec's result (read by nothing else) and a contiguous f32 value computed
        # before it: the integer mat-vec adds it in its epilogue (one dispatch less)
        position = {id(n): i for i, n in enumerate(graph.nodes)}
        self._res_adds: dict[int, Tensor] = {}  # add node id -> the mul_mat node
        self._mat_vecs: dict[int, list[tuple[Dispatch, int]]] = {}  # patchable mat-vec dispatches
        for node in graph.nodes:
            if node.op is not Op.ADD or len(node.srcs) != 2 or node.dtype != F32:
                continue
            for mm, y in (node.srcs, node.srcs[::-1]):
                if (
                    mm.op is Op.MUL_MAT and readers.get(id(mm)) == 1 and mm.shape == node.shape
                    and y.shape == node.shape and y.dtype == F32
                    and y.strides == contiguous_strides(y.shape)
                    and position.get(id(y), -1) < position[id(mm)]
                    and self._q8_mat_vec(mm, bindings)
                ):  # fmt: skip
                    self._res_adds[id(node)] = mm
                    break
        # producers that write q8 blocks as well, for the integer mat-vecs reading them: a norm
        # (with its fused weight) and a swiglu
        q8_inputs = {id(n.srcs[1]) for n in graph.nodes if self._q8_mat_vec(n, bindings)}
        self._norm_q8: set[int] = set()
        self._glu_q8: set[int] = set()
        self._attn_q8 = {  # attention read (through a reshape) by integer mat-vecs
            id(n.srcs[0]) for n in graph.nodes
            if n.op is Op.RESHAPE and id(n) in q8_inputs and n.srcs[0].op is Op.FLASH_ATTN_EXT
        }  # fmt: skip
        weighted = {id(n.srcs[0]): id(n) for n in graph.nodes if id(n) in self._fused}
        for node in graph.nodes:
            if (
                node.op in (Op.RMS_NORM, Op.NORM) and node.shape[-1] % 32 == 0
                and q8_inputs & {id(node), weighted.get(id(node))}
            ):  # fmt: skip
                self._norm_q8.add(id(node))
            if (
                node.op is Op.SWIGLU and id(node) in q8_inputs and node.shape[-1] % 32 == 0
                and all(s.dtype == F32 and s.shape == node.shape for s in node.srcs)
            ):  # fmt: skip
                self._glu_q8.add(id(node))
        # a rope whose only reader is a set_rows into a cache: one dispatch writes the cache rows
        self._rope_into: dict[int, Tensor] = {}
        self._rope_pending: dict[int, tuple[Tensor, list[Ref]]] = {}
        for node in graph.nodes:
            if node.op is not Op.SET_ROWS:
                continue
            dst, _, r = node.srcs
            if (
                r.op is Op.ROPE and readers.get(id(r)) == 1 and len(r.shape) == 3
                and r.shape[1] * r.shape[2] == math.prod(dst.shape[1:])
                and (dst.dtype == F32 or (dst.dtype == F16 and r.shape[2] % 2 == 0))
            ):  # fmt: skip
                self._rope_into[id(r)] = node
        # producers whose every reader is an integer mat-vec that makes the q8 blocks in its own
        # prologue (matvec_q8p): a norm (with its fused weight), a swiglu, split attention (its
        # parts merged there, through a reshape). They emit no dispatch.
        self._virtual: set[int] = set()
        self._pro: dict[int, dict[str, Any]] = {}  # id(store) -> the prologue that makes it
        users: dict[int, list[Tensor]] = {}
        for node in graph.nodes:
            for src in node.srcs:
                users.setdefault(id(src), []).append(node)
        outputs = {id(t) for t in graph.outputs.values()}
        by_id = {id(n): n for n in graph.nodes}

        def prologue_readers(n: Tensor, reads: int) -> bool:
            rs = users.get(id(n), [])
            return bool(rs) and id(n) not in outputs and all(
                r.srcs[1] is n and r.srcs[0] is not n
                and self._prologue_fits(r, bindings, reads)
                for r in rs
            )  # fmt: skip

        if not self.rt.cpu:
            for node in graph.nodes:
                if node.op in (Op.RMS_NORM, Op.NORM) and node.shape[-1] % 32 == 0:
                    mul = weighted.get(id(node))  # the fused weight's node, read instead
                    if prologue_readers(by_id[mul] if mul else node, 3):
                        self._virtual.add(id(node))
                elif (
                    node.op is Op.SWIGLU and node.shape[-1] % 32 == 0 and len(node.srcs) == 2
                    and all(s.dtype == F32 and s.shape == node.shape for s in node.srcs)
                    and prologue_readers(node, 2)
                ):  # fmt: skip
                    self._virtual.add(id(node))
                elif node.op is Op.FLASH_ATTN_EXT and len(users.get(id(node), [])) == 1:
                    (rs,) = users[id(node)]
                    t, hq, _ = node.srcs[0].shape
                    v = node.srcs[2]
                    splits, _ = self._attn_splits(t, hq, v.shape[0], v.shape[-1])
                    if (
                        rs.op is Op.RESHAPE and id(node) not in outputs and splits > 1
                        and node.shape[-1] % 32 == 0 and prologue_readers(rs, splits + 1)
                    ):  # fmt: skip
                        self._virtual.add(id(node))
        # a mat-vec read (through a reshape) only by a normal-mode rope, or only as the rows a
        # set_rows writes into a cache: matvec_q8p's epilogue ropes the rows in pairs and writes
        # them there (the rope's and set_rows' dispatches go)
        self._epi_rope: dict[int, Tensor] = {}  # rope node id -> mat-vec node
        self._epi_cache: dict[int, Tensor] = {}  # set_rows node id -> mat-vec node

        def only_mat_vec(n: Tensor, reader: Tensor) -> Tensor | None:
            mm = n.srcs[0] if n.op is Op.RESHAPE else None
            if (
                mm is None or [id(u) for u in users.get(id(n), [])] != [id(reader)]
                or [id(u) for u in users.get(id(mm), [])] != [id(n)]
                or id(n) in outputs or id(mm) in outputs or self.rt.cpu
                or not self._q8_mat_vec(mm, bindings)
            ):  # fmt: skip
                return None
            return mm

        for node in graph.nodes:
            if (
                node.op is Op.ROPE and node.params["mode"] != ROPE_NEOX and len(node.shape) == 3
                and node.shape[2] % 2 == 0 and node.params["n_dims"] % 2 == 0
            ):  # fmt: skip
                mm = only_mat_vec(node.srcs[0], node)
                if mm is not None:
                    self._epi_rope[id(node)] = mm
            elif node.op is Op.SET_ROWS and node.srcs[2].op is Op.RESHAPE:
                dst, src = node.srcs[0], node.srcs[2]
                mm = only_mat_vec(src, node)
                if mm is not None and len(src.shape) == 3 and src.shape[2] % 2 == 0 and (
                    src.shape[1] * src.shape[2] == math.prod(dst.shape[1:])
                ):  # fmt: skip
                    self._epi_cache[id(node)] = mm
        self._epi_pending: dict[int, Dispatch] = {}  # rope node id -> mat-vec dispatch
        root: dict[int, int] = {}
        for node in graph.nodes:
            if id(node) in self._epi_rope:  # the rope's value is the mat-vec's storage
                root[id(node)] = root.get(id(node.srcs[0]), id(node.srcs[0]))
            if id(node) in self._res_adds:
                mm = self._res_adds[id(node)]
                root[id(node)] = root.get(id(mm), id(mm))
            if id(node) in self._fused:
                root[id(node)] = root.get(id(node.srcs[0]), id(node.srcs[0]))
            if node.op in (Op.VIEW, Op.RESHAPE, Op.PERMUTE, Op.SET_ROWS):
                root[id(node)] = root.get(id(node.srcs[0]), id(node.srcs[0]))
        last: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            for s in node.srcs:
                last[root.get(id(s), id(s))] = i
        for t in graph.outputs.values():
            last[root.get(id(t), id(t))] = len(graph.nodes)
        for r, sr in self._rope_into.items():  # the rope's inputs are read when its set_rows runs
            for s in graph.nodes[position[r]].srcs:
                key = root.get(id(s), id(s))
                last[key] = max(last.get(key, 0), position[id(sr)])
        for node in graph.nodes:  # a virtual producer's inputs are read by its last reader
            if id(node) in self._virtual and node.op is not Op.FLASH_ATTN_EXT:
                end = last.get(root.get(id(node), id(node)), position[id(node)])
                for s in node.srcs:
                    key = root.get(id(s), id(s))
                    last[key] = max(last.get(key, 0), end)
        dying: dict[int, list[int]] = {}
        for r, i in last.items():
            dying.setdefault(i, []).append(r)

        owned: dict[int, Store] = {}
        # q8 copies of activations, by the store they were made from (freed with it)
        self._q8_of: dict[int, dict[tuple[int, int], Store]] = {}
        self._owned = owned
        for i, node in enumerate(graph.nodes):
            self._temps: list[Store] = []
            if node.op is Op.INPUT:
                continue
            if node.op is Op.WEIGHT:
                w = bindings.get(node.key)
                if w is None:
                    raise UnsupportedOp(f"graph {graph.name!r} needs '{node.key}', not bound")
                store = Store("buffer", 0, w.buf.size, w.buf)
                refs[id(node)] = Ref(store, 0, node.shape, node.strides, w.type)
                self._weights[id(node)] = w
                continue
            if node.op is Op.STATE:
                st = bindings.get(node.key)
                if st is None:
                    raise UnsupportedOp(f"graph {graph.name!r} needs '{node.key}', not bound")
                refs[id(node)] = Ref(Store("buffer", 0, st.buf.size, st.buf), 0, node.shape,
                                     node.strides, node.dtype)  # fmt: skip
                continue
            srcs = [refs[id(s)] for s in node.srcs]
            out = self._lower(node, srcs)
            refs[id(node)] = out
            if out.store.kind == "arena" and out.store in self._temps:
                self._temps.remove(out.store)
                owned[id(node)] = out.store
            for store in self._temps:
                self._release(store)
            for r in dying.get(i, ()):
                if r in owned:
                    store = owned.pop(r)
                    self._release(store)
                    for q8 in self._q8_of.pop(id(store), {}).values():
                        self._release(q8)
        self.outputs = {name: refs[id(t)] for name, t in graph.outputs.items()}

    def _q8_mat_vec(self, node: Tensor, bindings: Mapping[str, Any]) -> bool:
        """Whether a MUL_MAT node goes through the integer mat-vec (matvec_q8.comp)."""
        if node.op is not Op.MUL_MAT:
            return False
        a, b = node.srcs
        w = bindings.get(a.key) if a.op is Op.WEIGHT else None
        if w is None or getattr(w, "type", None) not in Q8_TYPES or len(w.shape) != 2:
            return False
        k = w.shape[1]
        t = math.prod(b.shape) // k
        return k % 32 == 0 and b.dtype == F32 and (self.rt.cpu or t <= MAX_T_MATVEC)

    def _prologue_fits(self, node: Tensor, bindings: Mapping[str, Any], reads: int) -> bool:
        """Whether integer mat-vec `node` can make its q8 blocks in a prologue that reads `reads`
        f32 values per activation value (matvec_q8p)."""
        if self.rt.cpu or not self._q8_mat_vec(node, bindings):
            return False
        m, k = node.srcs[0].shape
        t = math.prod(node.srcs[1].shape) // k
        return self._prologue_small(m, k, t) and reads * t * k <= PROLOGUE_FLOATS

    @staticmethod
    def _prologue_small(m: int, k: int, t: int) -> bool:
        return t * k // 32 <= PROLOGUE_BLOCKS and min(m, t * k) <= PROLOGUE_SMALL

    def _attn_rows(self, s: int, d: int) -> bool:
        """Whether attention takes the per-row kernel (lavapipe's): only for caches of at most
        ATTN_ROWS_MAX elements a head, past which lavapipe computes it wrong (nondeterministic
        garbage from about 42k: Gemma 3's 256-wide heads reach that at 164 cells)."""
        return self.rt.cpu and s * d <= ATTN_ROWS_MAX

    def _attn_splits(self, t: int, hq: int, s: int, d: int) -> tuple[int, int]:
        """Parts of the KV length that decode attention is split into, and keys per part: on the
        GPU kernels some 512 workgroups in all, parts of at least 32 keys (one workgroup per head
        would walk its keys serially)."""
        if self._attn_rows(s, d):
            return 1, -(-s // 128) * 128
        splits = max(1, min(-(-s // 32), -(-512 // (t * hq)), ATTN_MAX_SPLITS))
        per = -(-s // splits)
        chunk = -(-per // 32) * 32
        return -(-s // chunk), chunk  # none left empty

    def _q8(self, b: Ref) -> tuple[Store, int]:
        """b (contiguous f32, rows a multiple of 32 long) in q8 blocks (quantize_q8.comp): the
        store and the byte offset of its scales. Made once per value: q, k and v projections
        share it."""
        key = (b.off, b.n)
        owner = b.store if b.store.kind == "arena" and b.store in self._owned.values() else None
        qs_bytes = -(-b.n // ALIGN) * ALIGN  # scales follow the int8 values, aligned
        if key in self._q8_of.get(id(b.store), {}):  # written with b (norm, swiglu)
            return self._q8_of[id(b.store)][key], qs_bytes
        if owner is not None and key in self._q8_of.get(id(owner), {}):
            return self._q8_of[id(owner)][key], qs_bytes
        nblocks = b.n // 32
        store = self._alloc(qs_bytes + nblocks * 8)
        if owner is not None:
            self._q8_of.setdefault(id(owner), {})[key] = store
        else:
            self._temps.append(store)
        ref = Ref(store, 0, (store.nbytes // 4,), (1,), F32)
        groups = self._grid(-(-nblocks // 32))
        self._emit(
            "quantize_q8", (),
            [(b.store, 0), (store, 0), (store, qs_bytes), (b.store, 0), (b.store, 0)], "<6I",
            (nblocks, b.off // 4, groups[0], 0, 0, 0), groups, [b], [ref],
        )  # fmt: skip
        return store, qs_bytes

    def _weight_of(self, node: Tensor) -> VulkanWeight | None:
        if node.op is Op.WEIGHT:
            return self._weights.get(id(node))
        return None

    # ---- helpers -------------------------------------------------------------------------
    def _emit(self, shader, spec, bindings, fmt, push, groups, reads, writes) -> None:
        stores = [r.store for r in reads], [w.store for w in writes]
        self.dispatches.append(Dispatch(shader, spec, bindings, fmt, push, groups, *stores))

    def _grid(self, n_groups: int) -> tuple[int, int, int]:
        x = max(1, min(n_groups, self.rt.max_groups))
        return x, max(1, -(-n_groups // x)), 1

    def _contig(self, ref: Ref, align4: bool = False) -> Ref:
        if ref.contiguous and (not align4 or ref.off % 4 == 0):
            return ref
        out = self._new(ref.shape, ref.dtype)
        self._eltwise(0, ref, None, out)
        return out

    def _eltwise(self, op: int, a: Ref, b: Ref | None, out: Ref, s: float = 0.0) -> None:
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
        gelu = Store("buffer", 0, table.size, table)
        self._emit(
            "eltwise", (), [(a.store, 0), (bb.store, 0), (out.store, 0), (gelu, 0)],
            "<12I4IfII",
            (*ne, *sa, *sb, a.off, bb.off, out.off, flags, s, n, groups[0]), groups,
            [a, bb], [out],
        )  # fmt: skip

    # ---- lowering, node by node ----------------------------------------------------------
    def _lower(self, node: Tensor, srcs: list[Ref]) -> Ref:
        op = node.op
        if op is Op.VIEW:
            src = self._contig(srcs[0])
            return Ref(src.store, src.off + node.params["offset"], node.shape, node.strides,
                       src.dtype)  # fmt: skip
        if op is Op.RESHAPE:
            src = self._contig(srcs[0])
            return Ref(src.store, src.off, node.shape, contiguous_strides(node.shape), src.dtype)
        if op is Op.PERMUTE:
            src = srcs[0]
            axes = node.params["axes"]
            return Ref(src.store, src.off, node.shape, tuple(src.strides[a] for a in axes),
                       src.dtype)  # fmt: skip
        if id(node) in self._fused and srcs[0].store.kind == "virtual":
            pro = self._pro[id(srcs[0].store)]  # the norm weight, in the readers' prologue
            pro["b"] = srcs[1]
            pro["mode"] |= 512
            return srcs[0]
        if id(node) in self._fused:  # mul by the norm weight: done by the norm's dispatch
            d = self._norms[id(node.srcs[0])]
            w = srcs[1]
            d.bindings[2] = (w.store, 0)
            push = list(d.push)
            push[4] |= 2
            push[7] = w.off
            d.push = tuple(push)
            d.reads.append(w.store)
            return srcs[0]
        if id(node) in self._res_adds:
            mm = self._res_adds[id(node)]
            y = srcs[1] if node.srcs[0] is mm else srcs[0]
            patch = self._mat_vecs.get(id(mm))
            if patch and y.contiguous:
                for d, r0 in patch:
                    d.bindings[4] = (y.store, 0)
                    push = list(d.push)
                    push[7] |= 1
                    push[8] = y.off + r0
                    d.push = tuple(push)
                    d.reads.append(y.store)
                return srcs[0] if node.srcs[0] is mm else srcs[1]
        if id(node) in self._virtual and op is Op.SWIGLU and all(r.contiguous for r in srcs):
            return self._virtual_ref(node, {"mode": 3, "a": srcs[0], "b": srcs[1]})
        if id(node) in self._glu_q8:
            return self._swiglu_q8(node, srcs)
        if op in ELTWISE:
            out = self._new(node.shape, node.dtype)
            b = srcs[1] if len(srcs) > 1 else None
            self._eltwise(ELTWISE[op], srcs[0], b, out, node.params.get("scale", 0.0))
            return out
        lower = getattr(self, f"_op_{op.value}", None)
        if lower is None:
            raise UnsupportedOp(f"vulkan has no kernel for {op.value}")
        return lower(node, srcs)

    def _virtual_ref(self, node: Tensor, pro: dict[str, Any]) -> Ref:
        """The value of a producer left to its readers' prologues (matvec_q8p): no storage."""
        store = Store("virtual", 0, 0)
        self._pro[id(store)] = pro
        return Ref(store, 0, node.shape, contiguous_strides(node.shape), F32)

    def _swiglu_q8(self, node: Tensor, srcs: list[Ref]) -> Ref:
        """swiglu written as f32 and as q8 blocks for the integer mat-vec reading it."""
        a, b = self._contig(srcs[0], align4=True), self._contig(srcs[1], align4=True)
        out = self._new(node.shape, F32)
        q8, qs_bytes = self._q8_store(out)
        nblocks = out.n // 32
        groups = self._grid(-(-nblocks // 32))
        self._emit(
            "quantize_q8", (),
            [(a.store, 0), (q8, 0), (q8, qs_bytes), (b.store, 0), (out.store, 0)], "<6I",
            (nblocks, a.off // 4, groups[0], 1, b.off // 4, out.off // 4), groups,
            [a, b], [out, Ref(q8, 0, (q8.nbytes // 4,), (1,), F32)],
        )  # fmt: skip
        return out

    def _q8_store(self, out: Ref) -> tuple[Store, int]:
        """A q8 copy's store for `out` (a value being made now), found by _q8 later."""
        qs_bytes = -(-out.n // ALIGN) * ALIGN
        q8 = self._alloc(qs_bytes + out.n // 32 * 8)
        self._q8_of.setdefault(id(out.store), {})[(out.off, out.n)] = q8
        return q8, qs_bytes

    def _op_get_rows(self, node: Tensor, srcs: list[Ref]) -> Ref:
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
            table_byte = table.off * ITEMSIZE[table.dtype]
        n4 = node.n_elements // 4
        groups = self._grid(-(-n4 // 256))
        self._emit(
            "get_rows", (code,), [(table.store, 0), (ids.store, 0), (out.store, 0)], "<7I",
            (k, row_bytes, table_byte, ids.off, out.off // 4, n4, groups[0]), groups,
            [table, ids], [out],
        )  # fmt: skip
        return out

    def _op_set_rows(self, node: Tensor, srcs: list[Ref]) -> Ref:
        dst, ids, src = srcs
        ids = self._contig(ids)
        width = math.prod(dst.shape[1:])
        d = self._epi_pending.pop(id(node.srcs[2]), None)  # a rope in a mat-vec's epilogue
        if d is None and id(node) in self._epi_cache and src.contiguous:
            d = self._epi_dispatch(self._epi_cache[id(node)])  # the mat-vec's rows, as they are
            if d is not None:
                self._patch_push(d, Q8P_EMODE + 3, (2,))  # dim: any even number
        f16 = dst.dtype == F16
        if d is not None and (not f16 or (dst.off % 2 == 0 and width % 2 == 0)):
            # the mat-vec writes its rows into the cache rows
            emode = d.push[Q8P_EMODE] | 2 | (4 if f16 else 0)
            self._patch_push(d, Q8P_EMODE, (emode, dst.off, width))
            self._patch_push(d, Q8P_EMODE + 7, (ids.off,))
            d.bindings[3] = (dst.store, 0)
            d.bindings[10] = (ids.store, 0)
            d.reads.append(ids.store)
            d.writes = [dst.store]
            return Ref(dst.store, dst.off, node.shape, contiguous_strides(node.shape), dst.dtype)
        pending = self._rope_pending.pop(id(node.srcs[2]), None)
        if pending is not None:
            rope, rope_srcs = pending
            self._emit_rope(rope, rope_srcs, dst.store, dst.off, dst, ids, width, dst.dtype == F16)
            return Ref(dst.store, dst.off, node.shape, contiguous_strides(node.shape), dst.dtype)
        src = self._contig(src)
        rows = src.shape[0]
        f16 = dst.dtype == F16
        groups = self._grid(-(-(rows * ((width + 1) // 2)) // 256))
        self._emit(
            "set_rows", (), [(src.store, 0), (ids.store, 0), (dst.store, 0)], "<7I",
            (width, rows, src.off, ids.off, dst.off, int(f16), groups[0]), groups,
            [src, ids, dst], [dst],
        )  # fmt: skip
        return Ref(dst.store, dst.off, node.shape, contiguous_strides(node.shape), dst.dtype)

    def _rows_op(self, node: Tensor, x: Ref) -> tuple[int, int]:
        return node.shape[-1], math.prod(node.shape[:-1])

    def _op_rms_norm(self, node: Tensor, srcs: list[Ref], mode: int = 0) -> Ref:
        if id(node) in self._virtual and srcs[0].contiguous:
            pro = {"mode": 2 | (256 if mode & 1 else 0), "a": srcs[0], "b": srcs[0],
                   "eps": node.params["eps"]}  # fmt: skip
            return self._virtual_ref(node, pro)
        x = self._contig(srcs[0])
        n, rows = self._rows_op(node, x)
        out = self._new(node.shape, F32)
        groups = self._grid(rows)
        q8: list[tuple[Store, int]] = [(out.store, 0), (out.store, 0)]
        writes = [out]
        if id(node) in self._norm_q8:
            store, qs_bytes = self._q8_store(out)
            q8 = [(store, 0), (store, qs_bytes)]
            writes.append(Ref(store, 0, (store.nbytes // 4,), (1,), F32))
            mode |= 4
        self._emit(
            "norm", (), [(x.store, 0), (out.store, 0), (x.store, 0), *q8], "<5IfII",
            (n, rows, x.off, out.off, mode, node.params["eps"], groups[0], 0), groups, [x],
            writes,
        )  # fmt: skip
        self._norms[id(node)] = self.dispatches[-1]
        return out

    def _op_norm(self, node: Tensor, srcs: list[Ref]) -> Ref:
        return self._op_rms_norm(node, srcs, mode=1)

    def _op_soft_max(self, node: Tensor, srcs: list[Ref]) -> Ref:
        x = self._contig(srcs[0])
        mask = self._contig(srcs[1]) if len(srcs) > 1 else None
        n, rows = self._rows_op(node, x)
        out = self._new(node.shape, F32)
        groups = self._grid(rows)
        m = mask if mask is not None else x
        mask_rows = math.prod(mask.shape[:-1]) if mask is not None else 0
        self._emit(
            "softmax", (), [(x.store, 0), (m.store, 0), (out.store, 0)], "<6IfI",
            (n, rows, x.off, m.off, out.off, mask_rows, node.params["scale"], groups[0]), groups,
            [x, m], [out],
        )  # fmt: skip
        return out

    def _op_argmax(self, node: Tensor, srcs: list[Ref]) -> Ref:
        x = self._contig(srcs[0])
        n, rows = x.shape[-1], math.prod(x.shape[:-1])
        out = self._new(node.shape, I32)
        groups = self._grid(rows)
        self._emit("argmax", (), [(x.store, 0), (out.store, 0)], "<5I",
                   (n, rows, x.off, out.off, groups[0]), groups, [x], [out])  # fmt: skip
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

    def _op_rope(self, node: Tensor, srcs: list[Ref]) -> Ref:
        d = self._epi_dispatch(self._epi_rope.get(id(node)))
        if d is not None and all(r.contiguous for r in srcs):
            # the mat-vec ropes its rows in its epilogue: its output holds the rope's value
            p, dim = node.params, node.shape[2]
            x, pos = srcs[0], srcs[1]
            factors = srcs[2] if len(srcs) > 2 else None
            table = self._rope_table(p)
            f = factors if factors is not None else pos
            d.bindings[7:10] = [(pos.store, 0), (table, 0), (f.store, 0)]
            d.reads += [pos.store, table, f.store]
            # emode, eo, width, dim, n_dims, opos, off, oi, has_factors, attn_factor
            epi = (1, 0, 0, dim, p["n_dims"], pos.off, f.off, 0, int(factors is not None),
                   p["attn_factor"])  # fmt: skip
            self._patch_push(d, Q8P_EMODE, epi)
            if id(node) in self._rope_into:
                self._epi_pending[id(node)] = d  # the set_rows names the cache rows
            return Ref(x.store, x.off, node.shape, contiguous_strides(node.shape), F32)
        if id(node) in self._rope_into and all(r.contiguous for r in srcs):
            # written straight into the cache rows by the set_rows that reads it
            self._rope_pending[id(node)] = (node, srcs)
            return srcs[0]  # not read: the set_rows is this value's only reader
        out = self._new(node.shape, F32)
        self._emit_rope(node, srcs, out.store, out.off, out, None, 0)
        return out

    def _rope_table(self, p: Mapping[str, Any]) -> Store:
        """inv_freq[i] = freq_base^(-2i/n_dims) * freq_scale, computed in double precision."""
        half = p["n_dims"] // 2
        inv = p["freq_base"] ** (-np.arange(half, dtype=np.float64) * 2.0 / p["n_dims"])
        table = self.rt.buffer(max(16, half * 4))
        self.rt.write(table, (inv * p["freq_scale"]).astype(np.float32))
        self.constants.append(table)
        return Store("buffer", 0, table.size, table)

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
            [(x.store, 0), (pos.store, 0), (tstore, 0), (f.store, 0), (dst, 0), (i.store, 0)],
            "<10IfI3I",
            (t, h, d, p["n_dims"], x.off, pos.off, f.off, od, int(p["mode"] == ROPE_NEOX),
             int(factors is not None), p["attn_factor"], groups[0], flags, i.off, width),
            groups, [x, pos, f, i], [write],
        )  # fmt: skip

    def _op_mul_mat(self, node: Tensor, srcs: list[Ref]) -> Ref:
        a, b = srcs
        w = self._weight_of(node.srcs[0])
        out = self._new(node.shape, F32)
        if w is not None and len(w.shape) == 2:
            self._weight_mul_mat(w, a, self._contig(b, align4=True), out, id(node))
            return out
        a, b = self._contig(a), self._contig(b)
        m, k = a.shape[-2], a.shape[-1]
        t = b.shape[-2]
        ba, bb = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
        n = out.n
        groups = self._grid(-(-n // 256))
        self._emit(
            "matmul_batched", (), [(a.store, 0), (b.store, 0), (out.store, 0)], "<11I",
            (m, t, k, ba, bb, a.off, b.off, out.off, int(a.dtype == F16), n, groups[0]), groups,
            [a, b], [out],
        )  # fmt: skip
        return out

    def _weight_mul_mat(self, w: VulkanWeight, a: Ref, b: Ref, out: Ref, node_id: int) -> None:
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
            pro = self._pro.get(id(b.store))
            if b.store.kind == "virtual" and pro is None:
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
            qref = Ref(qstore, 0, (qstore.nbytes // 4,), (1,), F32)
            patch = self._mat_vecs.setdefault(node_id, [])
            for r0 in range(0, m, chunk):
                rows = min(chunk, m - r0)
                if self.rt.cpu:
                    groups = (-(-rows // 64), -(-t // MAX_T_MATVEC), 1)
                else:
                    groups = self._grid(-(-rows // MATVEC_ROWS))
                self._emit(
                    name, (code,),
                    [(a.store, r0 * w.row_nbytes), (qstore, 0), (qstore, qs_off), (out.store, 0),
                     (out.store, 0)],
                    "<9I", (k, w.row_nbytes, rows, t, out.off + r0, m, groups[0], 0, 0),
                    groups, [a, qref], [out],
                )  # fmt: skip
                patch.append((self.dispatches[-1], r0))
            return
        for r0 in range(0, m, chunk):
            rows = min(chunk, m - r0)
            wb = (a.store, r0 * w.row_nbytes)
            if self.rt.cpu:
                groups = (-(-rows // 64), -(-t // MAX_T_MATVEC), 1)
                self._emit(
                    "matvec_rows", (code,), [wb, (b.store, 0), (out.store, 0)], "<9I",
                    (k, w.row_nbytes, rows, t, b.off // 4, out.off + r0, m, round16, groups[0]),
                    groups, [a, b], [out],
                )  # fmt: skip
                continue
            tiled = t > MAX_T_MATVEC and k % 16 == 0
            if tiled:
                groups = (-(-rows // 64), -(-t // 64), 1)
                self._emit(
                    "matmul", (code,), [wb, (b.store, 0), (out.store, 0)], "<9I",
                    (k, w.row_nbytes, rows, t, b.off // 4, out.off + r0, m, round16, groups[0]),
                    groups, [a, b], [out],
                )  # fmt: skip
                continue
            for t0 in range(0, t, MAX_T_MATVEC):
                nt = min(MAX_T_MATVEC, t - t0)
                groups = self._grid(-(-rows // MATVEC_ROWS))
                self._emit(
                    "matvec", (code,), [wb, (b.store, 0), (out.store, 0)], "<9I",
                    (k, w.row_nbytes, rows, nt, (b.off + t0 * k) // 4, out.off + r0 + t0 * m, m,
                     round16, groups[0]),
                    groups, [a, b], [out],
                )  # fmt: skip

    def _plain_prologue(self, b: Ref, m: int, k: int, t: int) -> bool:
        """Whether a mat-vec quantizes its f32 activations itself, not by a quantize_q8 dispatch
        before it: on the GPU kernels, when no q8 copy of them was made already."""
        if self.rt.cpu or b.store.kind == "virtual" or not self._prologue_small(m, k, t):
            return False
        if (b.off, b.n) in self._q8_of.get(id(b.store), {}):
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
                [(a.store, r0 * w.row_nbytes), *[(out.store, 0)] * 4, (x.store, 0), (y.store, 0),
                 *[(out.store, 0)] * 4],
                Q8P_PUSH,
                (k, w.row_nbytes, rows, t, out.off + r0, m, groups[0], 0, 0, pro["mode"], x.off,
                 y.off, pro.get("dv", 1), pro.get("splits", 1), pro.get("eps", 0.0),
                 groups[0] * groups[1], *(0,) * 9, 1.0),
                groups, [a, x, y], [out],
            )  # fmt: skip
            patch.append((self.dispatches[-1], r0))

    def _op_flash_attn_ext(self, node: Tensor, srcs: list[Ref]) -> Ref:
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
        cpu = self._attn_rows(s, max(dk, dv))
        # on the GPU kernels, a long cache is split over workgroups and the parts merged by
        # attn_combine, or (virtual) in the prologue of the mat-vecs reading the result
        splits, chunk = self._attn_splits(t, hq, s, max(dk, dv))
        virtual = id(node) in self._virtual and splits > 1
        if virtual:
            dst = self._new((t * hq * splits * (dv + 2),), F32)
            self._pro[id(dst.store)] = {"mode": 4, "a": dst, "b": dst, "dv": dv, "splits": splits}
            out = Ref(dst.store, dst.off, node.shape, contiguous_strides(node.shape), F32)
        else:
            out = self._new(node.shape, F32)
            dst = self._new((t * hq * splits * (dv + 2),), F32) if splits > 1 else out
        groups = self._grid(-(-(t * hq) // 16) if cpu else t * hq * splits)
        spec = () if cpu else (dk, dv, int(k.dtype == F16), int(v.dtype == F16))
        self._emit(
            "flash_attn_rows" if cpu else "flash_attn", spec,
            [(q.store, 0), (k.store, 0), (v.store, 0), (m.store, 0), (dst.store, 0)],
            "<14I2fI" if cpu else "<14I2f3I",
            (dk, dv, s, hq, hkv, t, q.off, k.off, v.off, m.off, dst.off, k.strides[0],
             v.strides[0], flags, node.params["scale"], node.params["softcap"], groups[0],
             *(() if cpu else (splits, chunk))),
            groups, [q, k, v, m], [dst],
        )  # fmt: skip
        if splits > 1 and not virtual:
            q8 = id(node) in self._attn_q8 and dv % 32 == 0
            qb: list[tuple[Store, int]] = [(out.store, 0), (out.store, 0)]
            writes = [out]
            if q8:
                store, qs_bytes = self._q8_store(out)
                qb = [(store, 0), (store, qs_bytes)]
                writes.append(Ref(store, 0, (store.nbytes // 4,), (1,), F32))
            groups = self._grid(-(-(t * hq * dv // (4 if q8 else 1)) // 256))
            self._emit(
                "attn_combine", (), [(dst.store, 0), (out.store, 0), *qb], "<7I",
                (dv, splits, t * hq, dst.off, out.off, groups[0], int(q8)), groups, [dst],
                writes,
            )  # fmt: skip
        return out

    # ---- recording -----------------------------------------------------------------------
    def _record(self) -> None:
        rt, vk = self.rt, self.rt.vk
        staged = not rt.unified
        self.arena = rt.buffer(max(self.arena_peak, 16))
        self.inputs_dev = rt.buffer(self.inputs_size, host=not staged)
        self.inputs_host = rt.buffer(self.inputs_size, host=True) if staged else self.inputs_dev

        def buffer_of(store: Store) -> Buffer:
            if store.kind == "arena":
                return self.arena
            if store.kind == "inputs":
                return self.inputs_dev
            return store.buf

        # outputs: each output's span is copied into a host buffer at the end, unless it is
        # already in cached host memory. Device-local memory that the host can map (a discrete
        # GPU's resizable BAR) is uncached: reading logits from it costs milliseconds a step.
        self.out_plan: list[tuple[str, Ref, int, int, int]] = []  # name, ref, lo, hi, host off
        out_size = 0
        for name, ref in self.outputs.items():
            lo, hi = ref.span()
            size = ITEMSIZE[ref.dtype]
            self.out_plan.append((name, ref, lo, hi, out_size))
            out_size += -(-((hi - lo) * size) // ALIGN) * ALIGN
        copy_out = staged or not all(
            (buffer_of(ref.store) or rt.dummy).cached for ref in self.outputs.values()
        )
        self.outputs_host = rt.buffer(max(out_size, 16), host=True) if copy_out else None

        # descriptor sets
        n_sets = len(self.dispatches)
        n_desc = sum(len(d.bindings) for d in self.dispatches)
        pool_size = vk.VkDescriptorPoolSize(
            type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=max(1, n_desc)
        )
        self.pool = vk.vkCreateDescriptorPool(
            rt.device,
            vk.VkDescriptorPoolCreateInfo(maxSets=max(1, n_sets), poolSizeCount=1,
                                          pPoolSizes=[pool_size]),
            None,
        )  # fmt: skip
        pipelines = [
            rt.pipeline(d.shader, len(d.bindings), struct.calcsize(d.push_format), d.spec)
            for d in self.dispatches
        ]
        sets = []
        if n_sets:
            sets = vk.vkAllocateDescriptorSets(
                rt.device,
                vk.VkDescriptorSetAllocateInfo(
                    descriptorPool=self.pool, descriptorSetCount=n_sets,
                    pSetLayouts=[p.set_layout for p in pipelines],
                ),
            )  # fmt: skip
        writes = []
        infos = []
        for i, d in enumerate(self.dispatches):
            for j, (store, extra) in enumerate(d.bindings):
                buf = buffer_of(store) or rt.dummy
                offset = store.base + extra  # stores start 256-byte aligned
                rng = min(buf.size - offset, rt.max_range)
                info = vk.VkDescriptorBufferInfo(buffer=buf.handle, offset=offset, range=rng)
                infos.append(info)
                writes.append(vk.VkWriteDescriptorSet(
                    dstSet=sets[i], dstBinding=j, descriptorCount=1,
                    descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, pBufferInfo=[info],
                ))  # fmt: skip
        for start in range(0, len(writes), 512):
            part = writes[start : start + 512]
            vk.vkUpdateDescriptorSets(rt.device, len(part), part, 0, None)

        cb = vk.vkAllocateCommandBuffers(
            rt.device,
            vk.VkCommandBufferAllocateInfo(commandPool=rt.command_pool, level=0,
                                           commandBufferCount=1),
        )[0]  # fmt: skip
        self.command_buffer = cb
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo())
        compute, transfer, host = 0x800, 0x1000, 0x4000
        shader_read, shader_write = 0x20, 0x40
        transfer_read, transfer_write, host_read = 0x800, 0x1000, 0x2000

        def barrier(src_stage, dst_stage, src_access, dst_access):
            mb = vk.VkMemoryBarrier(srcAccessMask=src_access, dstAccessMask=dst_access)
            vk.vkCmdPipelineBarrier(cb, src_stage, dst_stage, 0, 1, [mb], 0, None, 0, None)

        if staged and self.inputs:
            region = vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=self.inputs_size)
            vk.vkCmdCopyBuffer(cb, self.inputs_host.handle, self.inputs_dev.handle, 1, [region])
            barrier(transfer, compute, transfer_write, shader_read)
        # hazards since the last barrier: (buffer, start, end) read and written
        pending_r: list[tuple[int, int, int]] = []
        pending_w: list[tuple[int, int, int]] = []

        def span(store: Store) -> tuple[int, int, int]:
            return id(buffer_of(store)), store.base, store.base + store.nbytes

        def overlaps(a, spans) -> bool:
            return any(a[0] == b[0] and a[1] < b[2] and b[1] < a[2] for b in spans)

        # LLMRT_VULKAN_TIMESTAMPS=1: a GPU timestamp before the first dispatch and after each one
        # (benchmarks/vulkan_profile.py reads them through dispatch_times())
        self.query_pool = None
        if os.environ.get("LLMRT_VULKAN_TIMESTAMPS") and self.dispatches:
            n_q = len(self.dispatches) + 1
            self.query_pool = vk.vkCreateQueryPool(
                rt.device, vk.VkQueryPoolCreateInfo(queryType=vk.VK_QUERY_TYPE_TIMESTAMP,
                                                    queryCount=n_q), None)  # fmt: skip
            vk.vkCmdResetQueryPool(cb, self.query_pool, 0, n_q)
            vk.vkCmdWriteTimestamp(cb, compute, self.query_pool, 0)
        self.n_barriers = 0
        for qi, (d, pipe, dset) in enumerate(zip(self.dispatches, pipelines, sets, strict=True)):
            reads = [span(s) for s in d.reads]
            writes_ = [span(s) for s in d.writes]
            if any(overlaps(r, pending_w) for r in reads) or any(
                overlaps(w, pending_w) or overlaps(w, pending_r) for w in writes_
            ):
                barrier(compute, compute, shader_write, shader_read | shader_write)
                self.n_barriers += 1
                pending_r, pending_w = [], []
            pending_r += reads
            pending_w += writes_
            vk.vkCmdBindPipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.handle)
            vk.vkCmdBindDescriptorSets(
                cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.layout, 0, 1, [dset], 0, None
            )
            data = struct.pack(d.push_format, *d.push)
            vk.vkCmdPushConstants(cb, pipe.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, len(data),
                                  vk.ffi.from_buffer(data))  # fmt: skip
            vk.vkCmdDispatch(cb, *d.groups)
            if self.query_pool is not None:
                vk.vkCmdWriteTimestamp(cb, compute, self.query_pool, qi + 1)
        if self.outputs_host is not None:
            barrier(compute, transfer, shader_write, transfer_read)
            for _, ref, lo, hi, host_off in self.out_plan:
                size = ITEMSIZE[ref.dtype]
                store = ref.store
                region = vk.VkBufferCopy(
                    srcOffset=store.base + lo * size, dstOffset=host_off, size=(hi - lo) * size
                )
                vk.vkCmdCopyBuffer(cb, buffer_of(store).handle, self.outputs_host.handle, 1,
                                   [region])  # fmt: skip
            barrier(transfer, host, transfer_write, host_read)
        else:
            barrier(compute, host, shader_write, host_read)
        vk.vkEndCommandBuffer(cb)
        self._buffer_of = buffer_of
        self.submit = vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cb])
        self._in_views = [
            (key, self.inputs_host.host[ref.store.base : ref.store.base + ref.store.nbytes],
             NP_TYPES[dtype])
            for key, ref, _, dtype in self.inputs
        ]  # fmt: skip

    def dispatch_times(self) -> list[tuple[str, float]]:
        """(shader, seconds) of each dispatch of the last run (needs LLMRT_VULKAN_TIMESTAMPS)."""
        vk = self.rt.vk
        n_q = len(self.dispatches) + 1
        data = vk.ffi.new("uint64_t[]", n_q)
        vk.vkGetQueryPoolResults(
            self.rt.device,
            self.query_pool,
            0,
            n_q,
            8 * n_q,
            vk.ffi.cast("void *", data),
            8,
            0x1 | 0x2,
        )  # 64-bit, wait
        limits = vk.vkGetPhysicalDeviceProperties(self.rt.physical).limits
        period = limits.timestampPeriod * 1e-9
        return [(f"{d.shader}{list(d.spec) if d.spec else ''}", (data[i + 1] - data[i]) * period)
                for i, d in enumerate(self.dispatches)]  # fmt: skip

    # ---- the hot path --------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        for key, view, np_type in self._in_views:
            arr = np.ascontiguousarray(inputs[key], dtype=np_type)
            view[:] = arr.reshape(-1).view(np.uint8)
        self.rt.run([self.command_buffer], self.submit)
        return self._read_outputs()

    def _read_outputs(self) -> dict[str, Any]:
        result = {}
        for name, ref, lo, hi, host_off in self.out_plan:
            size = ITEMSIZE[ref.dtype]
            if self.outputs_host is not None:
                raw = self.outputs_host.host[host_off : host_off + (hi - lo) * size]
            else:
                buf = self._buffer_of(ref.store)
                start = ref.store.base + lo * size
                raw = buf.host[start : start + (hi - lo) * size]
            flat = raw.view(NP_TYPES[ref.dtype])
            strided = np.lib.stride_tricks.as_strided(
                flat[ref.off - lo :], ref.shape, [s * size for s in ref.strides]
            )
            result[name] = np.array(strided)
        return result
