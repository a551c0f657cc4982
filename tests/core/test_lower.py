"""core/lower: views, the arena planner and the fusion rewrites every backend shares."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.gguf import GGUFReader
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op
from llmrt.lower import Arena, Storage, View, alias, fuse, plan_arena
from llmrt.models import Shape, get_architecture
from llmrt.reference import ReferenceProgram, host_weight

F32 = GGMLType.F32


def test_contiguity_ignores_the_strides_of_unit_dimensions():
    st = Storage("arena", 4096)
    assert View(st, 0, (1, 4, 8), (999, 8, 1), F32).contiguous
    assert not View(st, 0, (2, 4, 8), (64, 8, 1), F32).contiguous
    assert View(st, 3, (5,), (1,), F32).span() == (3, 8)
    g = Graph()
    x = g.input("x", (4, 6, 8))
    p = g.permute(x, 1, 0, 2)
    v = alias(p, View.whole(st, x.shape, F32))
    assert v.strides == (8, 48, 1) and not v.contiguous
    with pytest.raises(AssertionError):
        alias(g.view(p, (2, 8), (48, 1)), v)  # a view reads row-major: not of a permute


def test_arena_reuses_first_fit_merges_and_gives_the_tail_back():
    arena = Arena()
    a, b, c = arena.alloc(100), arena.alloc(300), arena.alloc(256)
    assert (a, b, c) == (0, 256, 768) and arena.peak == 1024
    arena.release(a, 100)
    assert arena.alloc(200) == 0  # the first hole that fits
    arena.release(0, 256)
    arena.release(b, 300)  # merges with the hole before it
    assert arena.free == [(0, 768)]
    arena.release(c, 256)  # touches the top: the arena shrinks to nothing in use
    assert arena.free == [] and arena.top == 0 and arena.peak == 1024


def test_plan_arena_never_overlaps_live_storages():
    rng = np.random.default_rng(0)
    storages = []
    for _ in range(300):
        first = int(rng.integers(0, 100))
        st = Storage("arena", int(rng.integers(1, 5000)))
        st.first, st.last = first, first + int(rng.integers(0, 20))
        storages.append(st)
    storages.append(Storage("weight", 10**6))  # not placed
    size = plan_arena(storages)
    placed = [s for s in storages if s.kind == "arena"]
    assert storages[-1].offset == -1
    for i, a in enumerate(placed):
        assert a.offset % 256 == 0 and a.offset + a.nbytes <= size
        for b in placed[i + 1 :]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
    assert size < sum(s.nbytes for s in placed) / 3  # liveness pays


def _tiny(path, n_tokens):
    reader = GGUFReader(path)
    arch = get_architecture(reader.metadata["general.architecture"])
    meta = {t.name: (t.shape, t.type) for t in reader.tensors}
    graph = arch.build(arch.hparams(reader.metadata), Shape(n_tokens, 32, n_tokens, 32), meta)
    return reader, graph


def test_fusions_follow_supports_and_leave_the_graph_alone(tiny_gguf_with_vocab):
    _, graph = _tiny(tiny_gguf_with_vocab, 1)
    before = list(graph.nodes)
    assert fuse(graph, lambda n: False) is graph
    fused = fuse(graph, lambda n: True)
    assert graph.nodes == before  # the rewrite made a copy
    ops = [n.op for n in graph.nodes]
    norms = [n for n in fused.nodes if n.op is Op.RMS_NORM]
    products = [n for n in fused.nodes if n.op is Op.MUL_MAT]
    # every norm's weight and every residual add (two a layer) went into the fused nodes
    assert all(len(n.srcs) == 2 for n in norms) and len(norms) == ops.count(Op.RMS_NORM)
    adds = ops.count(Op.ADD)
    assert adds > 0 and sum(len(n.srcs) == 3 for n in products) == adds
    assert [n.op for n in fused.nodes].count(Op.ADD) == 0
    assert len(fused.nodes) == len(graph.nodes) - ops.count(Op.RMS_NORM) - adds
    # only products the device accepts with their residual are fused
    residual = [s for n in graph.nodes if n.op is Op.ADD for s in n.srcs if s.op is Op.MUL_MAT]
    wide = max(mm.srcs[0].shape[0] for mm in residual)
    narrow = fuse(graph, lambda n: n.op is not Op.MUL_MAT or n.srcs[0].shape[0] < wide)
    kept = [n for n in narrow.nodes if n.op is Op.ADD]
    assert len(kept) == sum(mm.srcs[0].shape[0] == wide for mm in residual) > 0
    assert all(any(s.op is Op.MUL_MAT and s.srcs[0].shape[0] == wide for s in n.srcs)
               for n in kept)  # fmt: skip
    # a norm read twice keeps its own node
    g = Graph()
    x, w = g.input("x", (2, 8)), g.weight("w", (8,), F32)
    n = g.rms_norm(x, 1e-6)
    g.output("a", g.mul(n, w))
    g.output("b", g.scale(n, 2.0))
    assert fuse(g, lambda n: True) is g


@pytest.mark.parametrize("n_tokens", [1, 5])
def test_fused_graph_computes_the_same_bits_on_the_reference(tiny_gguf_with_vocab, n_tokens):
    reader, graph = _tiny(tiny_gguf_with_vocab, n_tokens)
    bindings = {t.name: host_weight(t) for t in reader.tensors}
    for node in graph.nodes:
        if node.op is Op.STATE:
            bindings[node.key] = np.zeros(node.shape, np.float16)
    rng = np.random.default_rng(1)
    inputs = {
        "tokens": rng.integers(0, 100, n_tokens).astype(np.int32),
        "pos": np.arange(n_tokens, dtype=np.int32),
        "kv_cells": np.arange(n_tokens, dtype=np.int32),
        "out_rows": np.arange(n_tokens, dtype=np.int32),
        "mask": np.triu(np.full((n_tokens, 32), -np.inf, np.float32), 1),
    }
    plain = ReferenceProgram(graph, {k: np.copy(v) if isinstance(v, np.ndarray) else v
                                     for k, v in bindings.items()}).run(inputs)  # fmt: skip
    fused = ReferenceProgram(fuse(graph, lambda n: True), bindings).run(inputs)
    for name in plain:
        np.testing.assert_array_equal(fused[name], plain[name])


@pytest.mark.parametrize("m, row_bytes, cap", [(320, 68, 4096), (128256, 2304, 1 << 28),
                                               (1000, 100, 100_000), (7, 5000, 4096)])  # fmt: skip
def test_a_weight_in_parts_covers_its_rows_once_within_the_cap(m, row_bytes, cap):
    from llmrt.lower.split import ROW_ALIGN, row_chunks

    parts = row_chunks(m, row_bytes, cap)
    assert [r0 for r0, _ in parts] == [sum(n for _, n in parts[:i]) for i in range(len(parts))]
    assert sum(n for _, n in parts) == m
    if m * row_bytes <= cap:
        assert parts == [(0, m)]
    elif row_bytes <= cap:  # a row fits: every part fits, aligned where ROW_ALIGN rows fit
        assert all(n * row_bytes <= cap for _, n in parts)
        aligned = cap // row_bytes >= ROW_ALIGN
        assert all(n % ROW_ALIGN == 0 for _, n in parts[:-1]) or not aligned
