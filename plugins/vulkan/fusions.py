"""The Vulkan kernels' own fusions, decided once per graph before lowering: which producers write
q8 blocks for the integer mat-vecs reading them, which are left to those mat-vecs' prologues
(matvec_q8p: a norm, a swiglu, split attention's merge), which ropes and cache writes go to a
mat-vec's epilogue or into one rope dispatch, and after which node each value's storage dies.

The fusions every backend shares (a norm's weight, a residual add) are graph rewrites in
core/lower; `fusable` says which of those fused nodes these kernels take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, Graph, Op, Tensor
from llmrt.ir.graph import contiguous_strides
from llmrt.lower import readers

F32, F16 = GGMLType.F32, GGMLType.F16
MAX_T_MATVEC = 8
ATTN_MAX_SPLITS = 64  # parts of one head's attention over the KV length, at most
ATTN_ROWS_MAX = 32768  # cache elements a head (keys x head size) for lavapipe's per-row kernel
PROLOGUE_BLOCKS = 512  # q8 blocks (t * k / 32) a matvec_q8p workgroup holds in shared memory
# Each matvec_q8p workgroup reads its activations' inputs whole: at most PROLOGUE_FLOATS f32
# values, and only in dispatches of at most PROLOGUE_SMALL rows or activation values (t * k);
# others keep a producer dispatch that writes q8 blocks: the prologue is a serial chain of loads
# and barriers, which costs wide activations (the 8B) more than the barrier stages it saves and
# pays on narrow ones (BENCHMARKS.md has the A/B).
PROLOGUE_FLOATS = 20480
PROLOGUE_SMALL = 2048
# weight types the integer mat-vec takes (q8_0 activations in ggml): matvec_q8.comp
Q8_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0})


def q8_mat_vec(node: Tensor, cpu: bool) -> bool:
    """Whether a MUL_MAT node goes through the integer mat-vec (matvec_q8.comp)."""
    if node.op is not Op.MUL_MAT:
        return False
    a, b = node.srcs[:2]
    if a.op is not Op.WEIGHT or a.dtype not in Q8_TYPES or len(a.shape) != 2:
        return False
    k = a.shape[1]
    t = math.prod(b.shape) // k
    return k % 32 == 0 and b.dtype == F32 and (cpu or t <= MAX_T_MATVEC)


def fusable(node: Tensor, cpu: bool) -> bool:
    """Which fused nodes (core/lower/fuse.py) the kernels take: a norm with an f32 weight
    (norm.comp), an integer mat-vec adding a contiguous f32 residual in its epilogue."""
    if node.op in (Op.RMS_NORM, Op.NORM):
        x, w = node.srcs
        return x.dtype == F32 and w.op is Op.WEIGHT and w.dtype == F32 and w.strides == (1,)
    y = node.srcs[2]
    return (
        q8_mat_vec(node, cpu) and y.dtype == F32 and y.shape == node.shape
        and y.strides == contiguous_strides(y.shape)
    )  # fmt: skip


def prologue_small(m: int, k: int, t: int) -> bool:
    return t * k // 32 <= PROLOGUE_BLOCKS and min(m, t * k) <= PROLOGUE_SMALL


def prologue_fits(node: Tensor, cpu: bool, reads: int) -> bool:
    """Whether integer mat-vec `node` can make its q8 blocks in a prologue that reads `reads`
    f32 values per activation value (matvec_q8p)."""
    if cpu or not q8_mat_vec(node, cpu):
        return False
    m, k = node.srcs[0].shape
    t = math.prod(node.srcs[1].shape) // k
    return prologue_small(m, k, t) and reads * t * k <= PROLOGUE_FLOATS


def attn_rows(cpu: bool, s: int, d: int) -> bool:
    """Whether attention takes the per-row kernel (lavapipe's): only for caches of at most
    ATTN_ROWS_MAX elements a head, past which lavapipe computes it wrong (nondeterministic
    garbage from about 42k: Gemma 3's 256-wide heads reach that at 164 cells)."""
    return cpu and s * d <= ATTN_ROWS_MAX


def attn_splits(cpu: bool, t: int, hq: int, s: int, d: int) -> tuple[int, int]:
    """Parts of the KV length that decode attention is split into, and keys per part: on the
    GPU kernels some 512 workgroups in all, parts of at least 32 keys (one workgroup per head
    would walk its keys serially)."""
    if attn_rows(cpu, s, d):
        return 1, -(-s // 128) * 128
    splits = max(1, min(-(-s // 32), -(-512 // (t * hq)), ATTN_MAX_SPLITS))
    per = -(-s // splits)
    chunk = -(-per // 32) * 32
    return -(-s // chunk), chunk  # none left empty


@dataclass
class Fusions:
    norm_q8: set[int] = field(default_factory=set)  # norms also writing q8 blocks
    glu_q8: set[int] = field(default_factory=set)  # swiglus computed by quantize_q8
    attn_q8: set[int] = field(default_factory=set)  # attentions whose merge writes q8 blocks
    rope_into: dict[int, Tensor] = field(default_factory=dict)  # rope -> the set_rows it feeds
    virtual: set[int] = field(default_factory=set)  # producers left to mat-vec prologues
    epi_rope: dict[int, Tensor] = field(default_factory=dict)  # rope -> mat-vec roping in epilogue
    epi_cache: dict[int, Tensor] = field(default_factory=dict)  # set_rows -> mat-vec writing rows
    dying: dict[int, list[int]] = field(default_factory=dict)  # node index -> roots dead after it


def plan_fusions(graph: Graph, cpu: bool) -> Fusions:
    f = Fusions()
    users: dict[int, list[Tensor]] = {}
    for node in graph.nodes:
        for src in node.srcs:
            users.setdefault(id(src), []).append(node)
    _q8_producers(graph, cpu, f)
    count = readers(graph)
    for node in graph.nodes:  # a rope read only by a set_rows into a cache: one dispatch
        if node.op is Op.SET_ROWS:
            dst, _, r = node.srcs
            if (
                r.op is Op.ROPE and count.get(id(r)) == 1 and len(r.shape) == 3
                and r.shape[1] * r.shape[2] == math.prod(dst.shape[1:])
                and (dst.dtype == F32 or (dst.dtype == F16 and r.shape[2] % 2 == 0))
            ):  # fmt: skip
                f.rope_into[id(r)] = node
    if not cpu:
        _prologues(graph, users, f)
        _epilogues(graph, users, f)
    f.dying = _deaths(graph, f)
    return f


def _q8_producers(graph: Graph, cpu: bool, f: Fusions) -> None:
    """Producers that write q8 blocks as well, for the integer mat-vecs reading them: a norm
    (with its fused weight), a swiglu, an attention's merge (read through a reshape)."""
    q8_inputs = {id(n.srcs[1]) for n in graph.nodes if q8_mat_vec(n, cpu)}
    f.attn_q8 = {
        id(n.srcs[0]) for n in graph.nodes
        if n.op is Op.RESHAPE and id(n) in q8_inputs and n.srcs[0].op is Op.FLASH_ATTN_EXT
    }  # fmt: skip
    for node in graph.nodes:
        if node.op in (Op.RMS_NORM, Op.NORM) and node.shape[-1] % 32 == 0 and (
            id(node) in q8_inputs
        ):  # fmt: skip
            f.norm_q8.add(id(node))
        if (
            node.op is Op.SWIGLU and id(node) in q8_inputs and node.shape[-1] % 32 == 0
            and all(s.dtype == F32 and s.shape == node.shape for s in node.srcs)
        ):  # fmt: skip
            f.glu_q8.add(id(node))


def _prologues(graph: Graph, users: dict[int, list[Tensor]], f: Fusions) -> None:
    """Producers whose every reader is an integer mat-vec that makes the q8 blocks in its own
    prologue (matvec_q8p): a norm, a swiglu, split attention (its parts merged there, through
    a reshape). They emit no dispatch."""
    outputs = {id(t) for t in graph.outputs.values()}

    def prologue_readers(n: Tensor, reads: int) -> bool:
        rs = users.get(id(n), [])
        return bool(rs) and id(n) not in outputs and all(
            r.srcs[1] is n and r.srcs[0] is not n and n not in r.srcs[2:]
            and prologue_fits(r, False, reads)
            for r in rs
        )  # fmt: skip

    for node in graph.nodes:
        if node.op in (Op.RMS_NORM, Op.NORM) and node.shape[-1] % 32 == 0:
            if prologue_readers(node, 3):
                f.virtual.add(id(node))
        elif (
            node.op is Op.SWIGLU and node.shape[-1] % 32 == 0 and len(node.srcs) == 2
            and all(s.dtype == F32 and s.shape == node.shape for s in node.srcs)
            and prologue_readers(node, 2)
        ):  # fmt: skip
            f.virtual.add(id(node))
        elif node.op is Op.FLASH_ATTN_EXT and len(users.get(id(node), [])) == 1:
            (rs,) = users[id(node)]
            t, hq, _ = node.srcs[0].shape
            v = node.srcs[2]
            splits, _ = attn_splits(False, t, hq, v.shape[0], v.shape[-1])
            if (
                rs.op is Op.RESHAPE and id(node) not in outputs and splits > 1
                and node.shape[-1] % 32 == 0 and prologue_readers(rs, splits + 1)
            ):  # fmt: skip
                f.virtual.add(id(node))


def _epilogues(graph: Graph, users: dict[int, list[Tensor]], f: Fusions) -> None:
    """A mat-vec read (through a reshape) only by a normal-mode rope, or only as the rows a
    set_rows writes into a cache: matvec_q8p's epilogue ropes the rows in pairs and writes them
    there (the rope's and set_rows' dispatches go)."""
    outputs = {id(t) for t in graph.outputs.values()}

    def only_mat_vec(n: Tensor, reader: Tensor) -> Tensor | None:
        mm = n.srcs[0] if n.op is Op.RESHAPE else None
        if (
            mm is None or [id(u) for u in users.get(id(n), [])] != [id(reader)]
            or [id(u) for u in users.get(id(mm), [])] != [id(n)]
            or id(n) in outputs or id(mm) in outputs or not q8_mat_vec(mm, False)
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
                f.epi_rope[id(node)] = mm
        elif node.op is Op.SET_ROWS and node.srcs[2].op is Op.RESHAPE:
            dst, src = node.srcs[0], node.srcs[2]
            mm = only_mat_vec(src, node)
            if mm is not None and len(src.shape) == 3 and src.shape[2] % 2 == 0 and (
                src.shape[1] * src.shape[2] == math.prod(dst.shape[1:])
            ):  # fmt: skip
                f.epi_cache[id(node)] = mm


def _deaths(graph: Graph, f: Fusions) -> dict[int, list[int]]:
    """Node index -> the values whose storage is free after it: the last reader of each root
    (aliases keep their root alive), later where a fused dispatch reads it later."""
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    root: dict[int, int] = {}
    for node in graph.nodes:
        if id(node) in f.epi_rope or node.op in (Op.VIEW, Op.RESHAPE, Op.PERMUTE, Op.SET_ROWS):
            root[id(node)] = root.get(id(node.srcs[0]), id(node.srcs[0]))
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for s in node.srcs:
            last[root.get(id(s), id(s))] = i
    for t in graph.outputs.values():
        last[root.get(id(t), id(t))] = len(graph.nodes)
    for r, sr in f.rope_into.items():  # the rope's inputs are read when its set_rows runs
        for s in graph.nodes[position[r]].srcs:
            key = root.get(id(s), id(s))
            last[key] = max(last.get(key, 0), position[id(sr)])
    for node in graph.nodes:  # a virtual producer's inputs are read by its last reader
        if id(node) in f.virtual and node.op is not Op.FLASH_ATTN_EXT:
            end = last.get(root.get(id(node), id(node)), position[id(node)])
            for s in node.srcs:
                key = root.get(id(s), id(s))
                last[key] = max(last.get(key, 0), end)
    dying: dict[int, list[int]] = {}
    for r, i in last.items():
        dying.setdefault(i, []).append(r)
    return dying
