"""Small-batch rewrites of a step list (steps.py), for backends with integer mat-vecs on q8
activations: the CUDA backend's and the OpenCL backend's (the Vulkan backend takes
``q8_activations`` with its own producers and prologues).

- ``q8_activations``: mat-vecs of the given weight types (``mmv``) become ``mmvq`` steps reading
  activations quantized once to q8 blocks: by the norm (``norm_q8``) or attention that produces
  them, or by a ``quant_q8`` step; the q8 storage is ``params["q8"]``, laid out by ``q8_layout``.
- ``glu_mat_vecs``: gate and up mat-vecs over one q8 input, then their GLU: one ``mmvq`` with
  ``params["glu"]``.
- ``shared_mat_vecs``: up to three plain mat-vecs over one q8 input (q, k, v): one ``mmvq`` with
  ``params["outs"]`` and ``params["ms"]``.
- ``rope_qkv``: rope(q), rope(k) and the two KV-cache writes: one ``rope_qkv`` step.
- ``rope_in_attention``: a one-token attention after a ``rope_qkv`` takes it over
  (``params["nr"]``, ``params["rope"]``).
- ``unused_norm_outputs``: a ``norm_q8`` whose f32 output nothing reads gets ``y_unused``.
- ``q8_gemms``: prompt products (``gemm``) become ``gemmq`` steps (ggml's MMQ) on activations
  quantized once to q8 blocks, as mat-vecs' are.

Each takes the steps and ``reads(storage, skip_step=None)`` (readers of a storage in the steps as
they are when the pass starts, graph outputs counting 1000) and returns the new list;
``small_batch`` applies them all, in order, to a plan. ``mmvq_lanes`` is how many lanes an
``mmvq`` kernel gives a row, ``token_rows`` how many token rows a mat-vec kernel takes.
"""

from __future__ import annotations

from collections.abc import Callable

from llmrt.gguf.constants import GGMLType
from llmrt.lower.arena import ALIGN
from llmrt.lower.steps import Plan, Step
from llmrt.lower.view import Storage

Reads = Callable[..., int]


def q8_layout(n: int) -> tuple[int, int]:
    """(offset of the per-block (scale, sum) pairs, total bytes) of n activations as q8."""
    dso = -(-n // ALIGN) * ALIGN
    return dso, dso + (n // 32) * 8


def q8_of(step: Step, n: int) -> tuple[Storage, int]:
    """The q8 copy of `n` activations that a step writes or reads (``params["q8"]``), and the
    byte offset of its scales there (``q8_layout``)."""
    return step.params["q8"], q8_layout(n)[0]


def _norm_or_attention(producer: Step) -> bool:
    return producer.op in ("norm", "fattn")


def q8_activations(
    steps: list[Step],
    storage: Callable[..., Storage],
    types: frozenset[GGMLType],
    writes_q8: Callable[[Step], bool] = _norm_or_attention,
    prologue: Callable[[Step], bool] | None = None,
    ops: tuple[str, str] = ("mmv", "mmvq"),
) -> list[Step]:
    """`writes_q8(producer)`: the producer of a mat-vec's activations can write them as q8 too
    (a norm becomes ``norm_q8``, others get ``params["q8"]``); `prologue(mat_vec)`: a mat-vec
    whose activations have no q8 copy yet stays an ``mmv`` (it makes its q8 blocks itself).
    `ops`: the product steps taken and what they become (OpenCL's prompt GEMMs: gemm, gemmq)."""
    q8_of: dict[tuple[Storage, int, int], Storage] = {}
    out: list[Step] = []
    for st in steps:
        if st.op == ops[0] and st.params["type"] in types:
            x = st.ins[1]
            key = (x.storage, x.offset, x.n)
            q8 = q8_of.get(key)
            if q8 is None:
                writers = (p for p in reversed(out) if p.out is not None)
                prod = next((p for p in writers if p.out.storage is x.storage), None)
                fits = prod is not None and prod.out.same(x) and prod.out.shape[-1] % 32 == 0
                if not (fits and writes_q8(prod)) and prologue is not None and prologue(st):
                    out.append(st)
                    continue
                q8 = q8_of[key] = storage("arena", q8_layout(x.n)[1])
                if fits and writes_q8(prod):  # the producer writes its output as q8 too
                    prod.op = "norm_q8" if prod.op == "norm" else prod.op
                    prod.params["q8"] = q8
                else:
                    out.append(Step("quant_q8", [x], None, {"q8": q8, "n": x.n}))
            st.op = ops[1]
            st.params["q8"] = q8
            st.ins = [st.ins[0], *st.ins[2:]]
        out.append(st)
    return out


def glu_mat_vecs(steps: list[Step], reads: Reads) -> list[Step]:
    """gate and up mat-vecs over one q8 input, then their GLU: one launch."""
    out: list[Step] = []
    i = 0
    while i < len(steps):
        a = steps[i]
        if i + 2 < len(steps) and [s.op for s in steps[i : i + 3]] == ["mmvq", "mmvq", "glu"]:
            b, g = steps[i + 1], steps[i + 2]
            pa, pb = a.params, b.params
            plain = len(a.ins) == 1 and len(b.ins) == 1
            same = (pa["q8"] is pb["q8"] and pa["type"] == pb["type"] and pa["k"] == pb["k"]
                    and pa["m"] == pb["m"] and a.ins[0].dtype == b.ins[0].dtype)  # fmt: skip
            order = None
            if g.ins[0].same(a.out) and g.ins[1].same(b.out):
                order = (a, b)
            elif g.ins[0].same(b.out) and g.ins[1].same(a.out):
                order = (b, a)
            if plain and same and order and reads(a.out.storage) == reads(b.out.storage) == 1:
                gate, up = order
                params = dict(gate.params, glu=g.params["op"])
                out.append(Step("mmvq", [gate.ins[0], up.ins[0]], g.out, params))
                i += 3
                continue
        out.append(a)
        i += 1
    return out


def shared_mat_vecs(steps: list[Step], reads: Reads, op: str = "mmvq") -> list[Step]:
    """Up to three plain `op` products (mat-vecs; CUDA's prompt gemmq too) over the same q8 input
    (q, k, v): one launch."""
    out: list[Step] = []
    for st in steps:
        prev = out[-1] if out else None
        if (st.op == op and prev is not None and prev.op == op and len(st.ins) == 1
                and "glu" not in st.params and "glu" not in prev.params
                and prev.params["q8"] is st.params["q8"]
                and prev.params["type"] == st.params["type"]
                and prev.params["k"] == st.params["k"] and len(prev.params.get("outs", [1])) < 3
                and (len(prev.ins) == 1 or "outs" in prev.params)):  # fmt: skip
            if "outs" not in prev.params:
                prev.params["outs"] = [prev.out]
                prev.params["ms"] = [prev.params["m"]]
            prev.ins.append(st.ins[0])
            prev.params["outs"].append(st.out)
            prev.params["ms"].append(st.params["m"])
            continue
        out.append(st)
    return out


def rope_qkv(steps: list[Step], reads: Reads) -> list[Step]:
    """rope(q), rope(k), set_rows(K cache, rope(k)), set_rows(V cache, v): one launch."""
    out: list[Step] = []
    i = 0
    while i < len(steps):
        w = steps[i : i + 4]
        match = _rope_qkv_match(w, reads) if len(w) == 4 else None
        if match is not None:
            rq, rk, sk, sv = match
            out.append(Step("rope_qkv", [rq.ins[0], rk.ins[0], sv.ins[2], *rq.ins[1:],
                                         sk.ins[0], sv.ins[0], sk.ins[1]], rq.out,
                            dict(rq.params)))  # fmt: skip
            i += 4
            continue
        out.append(steps[i])
        i += 1
    return out


def _rope_qkv_match(w: list[Step], reads: Reads) -> tuple[Step, ...] | None:
    if [s.op for s in w] != ["rope", "rope", "set_rows", "set_rows"]:
        return None
    r1, r2, s1, s2 = w
    same_rope = (
        r1.params == r2.params and r1.ins[1].same(r2.ins[1]) and len(r1.ins) == len(r2.ins)
        and (len(r1.ins) < 3 or r1.ins[2].same(r2.ins[2])) and s1.ins[1].same(s2.ins[1])
    )  # fmt: skip
    match = None
    for rk, rq in ((r1, r2), (r2, r1)):
        for sk, sv in ((s1, s2), (s2, s1)):
            if sk.ins[2].same(rk.out) and not sv.ins[2].same(rq.out):
                match = (rq, rk, sk, sv)
    if not same_rope or match is None:
        return None
    rq, rk, sk, sv = match
    if reads(rk.out.storage, sk) != 0 or rq.ins[0].shape[-1] != rk.ins[0].shape[-1]:
        return None
    return match


def _attention_takes_new_row(rope_qkv: Step, fattn: Step) -> bool:
    """One token whose roped q only the attention reads, and caches laid out [cell, head, dim]
    as the attention's K and V views: the attention kernel can rope and store the row itself."""
    q, k, v = fattn.ins[:3]
    kc, vc, ids = rope_qkv.ins[-3:]
    t, _, d = q.shape
    hk = k.shape[1]
    vrow = rope_qkv.ins[2].n // ids.n
    return (
        t == 1 and ids.n == 1 and fattn.ins[0].same(rope_qkv.out) and vrow == hk * d
        and k.storage is kc.storage and k.offset == kc.offset and v.storage is vc.storage
        and v.offset == vc.offset and tuple(k.strides[:2]) == (hk * d, d)
        and tuple(v.strides[:2]) == (hk * d, d)
    )  # fmt: skip


def rope_in_attention(steps: list[Step], reads: Reads) -> list[Step]:
    """A one-token step's attention ropes q and k itself and writes the new K/V rows (the
    rope_qkv launch goes): the new row's values come from shared memory, the rest from the cache."""
    out: list[Step] = []
    for st in steps:
        prev = out[-1] if out else None
        if (st.op == "fattn" and prev is not None and prev.op == "rope_qkv"
                and _attention_takes_new_row(prev, st)
                and reads(prev.out.storage, st) == 0):  # fmt: skip
            q, kn, vn, pos = prev.ins[:4]
            ff = prev.ins[4:5] if len(prev.ins) == 8 else []
            kc, vc, ids = prev.ins[-3:]
            st.params["nr"] = len(st.ins)  # ins from here: the new row and where it goes
            st.params["rope"] = dict(prev.params)
            st.ins = [q, *st.ins[1:], kn, vn, pos, ids, kc, vc, *ff]
            out[-1] = st
            continue
        out.append(st)
    return out


def unused_norm_outputs(steps: list[Step], reads: Reads) -> list[Step]:
    for st in steps:  # a norm whose f32 output only fed mat-vecs need not write it
        if st.op == "norm_q8":
            st.params["y_unused"] = reads(st.out.storage) == 0
    return steps


def _norm(producer: Step) -> bool:
    return producer.op == "norm"


def q8_gemms(plan: Plan, storage: Callable[..., Storage], types: frozenset[GGMLType]) -> None:
    """Prompt products (gemm) of `types` become ``gemmq`` steps on activations quantized once to
    q8 blocks as mmvq's (``q8_activations``): by the norm that makes them (``norm_q8``) or by a
    ``quant_q8`` step, shared by the products reading one value (q, k, v; gate, up); a norm whose
    f32 rows only the products read then need not write them."""
    plan.steps[:] = q8_activations(plan.steps, storage, types, _norm, ops=("gemm", "gemmq"))
    plan.steps[:] = unused_norm_outputs(plan.steps, plan.reads)


def small_batch(plan: Plan, storage: Callable[..., Storage], types: frozenset[GGMLType]) -> None:
    """Every pass above, in order, on `plan`'s steps (in place): q8 activations for mat-vecs of
    `types`, then the merges and fusions."""
    steps = plan.steps
    steps[:] = q8_activations(steps, storage, types)
    for rewrite in (glu_mat_vecs, shared_mat_vecs, rope_qkv, rope_in_attention,
                    unused_norm_outputs):  # fmt: skip
        steps[:] = rewrite(steps, plan.reads)


def mmvq_lanes(n_blocks: int) -> int:
    """Lanes an integer mat-vec gives a row of `n_blocks` q8 blocks: the group size (32, 16 or
    8) that leaves fewest lanes idle (a lane takes whole blocks: 18 blocks take 8, not 32)."""
    best, eff = 32, 0.0
    for g in (32, 16, 8):
        e = n_blocks / (g * -(-n_blocks // g))
        if e > eff + 1e-9:
            best, eff = g, e
    return best


def token_rows(t: int) -> int:
    """The mat-vec kernel variant for `t` token rows: 1, 2, 4 or 8 (CUDA's and OpenCL's)."""
    return 1 if t == 1 else 2 if t == 2 else 4 if t <= 4 else 8


def attention_heads(hq: int, hkv: int) -> int:
    """Query heads one decode attention block or workgroup takes, all of one KV head (whose K
    and V rows it then reads once for them): 4, 2 or 1, whichever divides the heads a KV head
    serves."""
    return next(n for n in (4, 2, 1) if (hq // hkv) % n == 0)
