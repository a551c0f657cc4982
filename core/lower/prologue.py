"""Rewrites of a step list (steps.py) for an integer mat-vec that makes its q8 blocks itself, in a
prologue, from what their producer would have read, and ropes its rows or writes them into a
KV cache in an epilogue (the Vulkan backend's matvec_q8p); and for a rope kernel that writes its
rows into a cache.

A prologue mat-vec is an ``mmvp`` step. ``params["pro"]`` says what its prologue computes from
its f32 inputs ``params["a"]`` and ``params["b"]``: ``mode`` 1 q8 blocks of a; 2 a norm of a
(eps; +256 mean-centred, +512 times the weight b); 3 swiglu(a, b); 4 the merge of split
attention's parts a (dv, splits). ``params["residual"]`` is added in its epilogue, which may
also rope the rows (``params["rope"]``, ``params["pos"]``, ``params["factors"]``) and write
them into rows ``params["ids"]`` of the cache ``params["cache"]``. A ``rope`` step with
``params["cache"]`` writes into the cache rows instead of its output. ``reads`` is as in
passes.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX
from llmrt.lower.passes import Reads
from llmrt.lower.steps import Step
from llmrt.lower.view import Storage, View

F32, F16 = GGMLType.F32, GGMLType.F16
Fits = Callable[[Step, int], bool]  # (mat-vec, f32 values its prologue reads per activation)


def prologue_step(mv: Step, pro: dict[str, Any], a: View, b: View) -> Step:
    """Mat-vec `mv` (an ``mmv`` step) making its q8 blocks from a and b as `pro` says."""
    residual = mv.ins[2] if len(mv.ins) == 3 else None
    ins = [mv.ins[0], a, b] + ([residual] if residual is not None else [])
    return Step("mmvp", ins, mv.out, dict(mv.params, pro=pro, a=a, b=b, residual=residual))


def swiglu(p: Step, align: int = 1) -> bool:
    """A swiglu step over f32 operands laid out as its output, at element offsets that are a
    multiple of `align`."""
    if p.op != "glu" or p.params["op"] != 0:
        return False
    return all(
        v.dtype == F32 and v.shape == p.out.shape and v.contiguous and v.offset % align == 0
        for v in p.ins
    )


def _prologue_of(p: Step) -> tuple[dict[str, Any], View, View, int] | None:
    """What a mat-vec's prologue computes in place of producer `p`, from which inputs, and how
    many f32 values it reads per activation."""
    if p.out is None or p.out.shape[-1] % 32 or p.params.get("strided"):
        return None
    if p.op == "norm":
        w = p.ins[1] if len(p.ins) == 2 else None
        mode = 2 | 256 * p.params["mode"] | (512 if w is not None else 0)
        return {"mode": mode, "eps": p.params["eps"]}, p.ins[0], w or p.ins[0], 3
    if swiglu(p):
        return {"mode": 3}, p.ins[0], p.ins[1], 2
    if p.op == "fattn" and p.params["splits"] > 1:
        t, hq, dv = p.out.shape
        splits = p.params["splits"]
        parts = View.whole(p.temps[0], (t * hq * splits * (dv + 2),), F32)
        return {"mode": 4, "dv": dv, "splits": splits}, parts, parts, splits + 1
    return None


def producers_in_prologues(steps: list[Step], reads: Reads, fits: Fits) -> list[Step]:
    """A norm, a swiglu or a split attention (its parts, unmerged) whose every reader is an
    ``mmv`` reading it as its activations, each with a prologue that `fits`: no launch of its
    own (the attention's only writes its parts); its readers become ``mmvp`` steps."""
    users: dict[Storage, list[Step]] = {}
    for st in steps:
        for v in st.ins:
            users.setdefault(v.storage, []).append(st)
    replaced: dict[int, Step] = {}
    gone: set[int] = set()
    for p in steps:
        found = _prologue_of(p)
        if found is None:
            continue
        pro, a, b, n = found
        s = p.out.storage
        us = users.get(s, [])
        if not us or reads(s) != len(us) or not all(
            u.op == "mmv" and u.ins[1].same(p.out) and sum(v.storage is s for v in u.ins) == 1
            and (p.op == "fattn" or u.ins[1].shape == p.out.shape) and fits(u, n)
            for u in us
        ):  # fmt: skip
            continue
        for u in us:
            replaced[id(u)] = prologue_step(u, pro, a, b)
        if p.op == "fattn":
            p.out, p.temps = a, []  # the attention writes its parts; the prologues merge them
            p.params["parts"] = True
        else:
            gone.add(id(p))
    return [replaced.get(id(st), st) for st in steps if id(st) not in gone]


def _into_cache(rows: View, dst: View, reads: Reads) -> bool:
    """A rope's output `rows` fill the cache rows of a set_rows, their only reader."""
    return (
        len(rows.shape) == 3 and reads(rows.storage) == 1
        and rows.shape[1] * rows.shape[2] == math.prod(dst.shape[1:])
        and (dst.dtype == F32 or (dst.dtype == F16 and rows.shape[2] % 2 == 0))
    )  # fmt: skip


def epilogues(steps: list[Step], reads: Reads, single: Callable[[Step], bool]) -> list[Step]:
    """A prologue mat-vec that is one launch (`single`) and whose output only a normal-mode rope
    reads ropes its rows itself; one whose rows, roped so or not, only a set_rows reads writes
    them into the cache rows (the rope's and set_rows' launches go)."""
    made: dict[Storage, Step] = {}  # storage -> the mmvp step writing it
    out: list[Step] = []
    for st in steps:
        src = st.ins[2] if st.op == "set_rows" else st.ins[0] if st.op == "rope" else None
        mv = made.get(src.storage) if src is not None else None
        if mv is not None and src is not None and src.same(mv.out) and "cache" not in mv.params:
            if st.op == "rope" and _epilogue_ropes(st, mv):
                factors = st.ins[2] if len(st.ins) > 2 else None
                rope = dict(st.params, dim=st.out.shape[2])
                mv.params.update(rope=rope, pos=st.ins[1], factors=factors)
                mv.ins += st.ins[1:]
                o = st.out  # the mat-vec writes the rope's value
                mv.out = View(o.storage, o.offset, mv.out.shape, mv.out.strides, mv.out.dtype)
                made[o.storage] = mv
                continue
            if st.op == "set_rows" and _epilogue_writes(st, mv, reads):
                mv.params.update(cache=st.ins[0], ids=st.ins[1])
                mv.ins.append(st.ins[1])
                continue
        out.append(st)
        if st.op == "mmvp" and single(st) and reads(st.out.storage) == 1:
            made[st.out.storage] = st
    return out


def _epilogue_ropes(rope: Step, mv: Step) -> bool:
    p, shape = rope.params, rope.out.shape
    return (
        "rope" not in mv.params and p["mode"] != ROPE_NEOX and len(shape) == 3
        and shape[2] % 2 == 0 and p["n_dims"] % 2 == 0 and not p.get("strided")
    )  # fmt: skip


def _epilogue_writes(sr: Step, mv: Step, reads: Reads) -> bool:
    dst, src = sr.ins[0], sr.ins[2]
    width = math.prod(dst.shape[1:])
    if "rope" in mv.params:  # the roped rows, where the rope would fill the cache rows
        if not _into_cache(src, dst, reads):
            return False
    elif len(src.shape) != 3 or src.shape[2] % 2 or src.shape[1] * src.shape[2] != width:
        return False
    return dst.dtype != F16 or (dst.offset % 2 == 0 and width % 2 == 0)


def rope_into_cache(steps: list[Step], reads: Reads) -> list[Step]:
    """A rope whose only reader is a set_rows into a cache: one rope launch writing the cache
    rows, where the set_rows was."""
    ropes = {st.out.storage: st for st in steps if st.op == "rope" and "cache" not in st.params}
    merged: dict[int, Step] = {}
    gone: set[int] = set()
    for st in steps:
        rope = ropes.get(st.ins[2].storage) if st.op == "set_rows" else None
        if (rope is not None and st.ins[2].same(rope.out) and not rope.params.get("strided")
                and _into_cache(rope.out, st.ins[0], reads)):  # fmt: skip
            params = dict(rope.params, cache=st.ins[0], ids=st.ins[1])
            merged[id(st)] = Step("rope", [*rope.ins, st.ins[1]], None, params)
            gone.add(id(rope))
    return [merged.get(id(st), st) for st in steps if id(st) not in gone]
