"""Conformance cases for the decode fusions (llmrt.lower.passes), added to the shared suite
through ``register_conformance_cases``: a layer's attention block and its feed-forward block as
a model builds them, one token (the fused decode step) and three, with each legacy quant type,
and a prompt of 40 tokens.
The reference runs them op by op; a backend that fuses runs its fused kernels (norm_q8, the
integer mat-vecs over q/k/v and gate/up, rope with the KV writes or inside the attention, the
attention writing q8)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph, Tensor
from llmrt.testing.conformance import OpCase

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
LEGACY = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)
NMSE_LAYER = 2e-3  # STYLE.md: a whole layer
EMBD, HQ, HKV, HEAD, FFN = 128, 4, 2, 32, 96


def _x(shape: tuple[int, ...], dtype: GGMLType = F32, values: str = "uniform") -> tuple:
    return ("input", shape, dtype, values)


def _w(shape: tuple[int, ...], dtype: GGMLType) -> tuple:
    return ("weight", shape, dtype, "uniform")


def attention_block(
    wtype: GGMLType, t: int, s: int = 40, kv: GGMLType = F16, mode: int = ROPE_NORMAL,
    n_dims: int = HEAD, factors: bool = False,
) -> OpCase:  # fmt: skip
    """x + wo(attention(rope(wq n), rope(wk n), wv n)) over a cache of s cells that the step
    writes first, n = rms_norm(x) * weight."""
    leaves = {
        "x": _x((t, EMBD)), "norm": _w((EMBD,), F32), "wq": _w((HQ * HEAD, EMBD), wtype),
        "wk": _w((HKV * HEAD, EMBD), wtype), "wv": _w((HKV * HEAD, EMBD), wtype),
        "wo": _w((EMBD, HQ * HEAD), wtype), "pos": _x((t,), I32, "pos"),
        # one token: any cell; several: distinct cells (a cache row is written once)
        "cells": _x((t,), I32, f"ids:{s}" if t == 1 else "perm"),
        "mask": _x((t, s), F32, "mask"),
        "cache_k": ("state", (s, HKV, HEAD), kv, "uniform"),
        "cache_v": ("state", (s, HKV, HEAD), kv, "uniform"),
    }  # fmt: skip
    if factors:
        leaves["ff"] = _w((n_dims // 2,), F32)

    def build(g: Graph, x: dict[str, Tensor]) -> Tensor:  # in a model builder's order
        rope = dict(n_dims=n_dims, mode=mode, freq_base=10000.0,
                    freq_factors=g.scale(x["ff"], 1.0) if factors else None)  # fmt: skip
        n = g.mul(g.rms_norm(x["x"], 1e-5), x["norm"])
        q, k, v = (g.mul_mat(x[w], n) for w in ("wq", "wk", "wv"))
        q = g.rope(g.reshape(q, t, HQ, HEAD), x["pos"], **rope)
        k = g.rope(g.reshape(k, t, HKV, HEAD), x["pos"], **rope)
        v = g.reshape(v, t, HKV, HEAD)
        ck = g.set_rows(x["cache_k"], x["cells"], k)
        cv = g.set_rows(x["cache_v"], x["cells"], v)
        a = g.flash_attn_ext(q, g.rows(ck, s), g.rows(cv, s), x["mask"],
                             scale=1 / math.sqrt(HEAD))  # fmt: skip
        return g.add(g.mul_mat(x["wo"], g.reshape(a, t, HQ * HEAD)), x["x"])

    name = (f"decode_attention(type_a={wtype.name.lower()},t={t},s={s},kv={kv.name.lower()},"
            f"rope={'neox' if mode == ROPE_NEOX else 'normal'},n_dims={n_dims}"
            f"{',freq_factors' if factors else ''})")  # fmt: skip
    return OpCase(name, leaves, build, NMSE_LAYER)


def ffn_block(wtype: GGMLType, t: int, gelu: bool = False) -> OpCase:
    """x + down(glu(gate n, up n)), n = rms_norm(x) * weight."""
    leaves = {
        "x": _x((t, EMBD)), "norm": _w((EMBD,), F32), "gate": _w((FFN, EMBD), wtype),
        "up": _w((FFN, EMBD), wtype), "down": _w((EMBD, FFN), wtype),
    }  # fmt: skip

    def build(g: Graph, x: dict[str, Tensor]) -> Tensor:
        n = g.mul(g.rms_norm(x["x"], 1e-5), x["norm"])
        glu = g.geglu if gelu else g.swiglu
        h = glu(g.mul_mat(x["gate"], n), g.mul_mat(x["up"], n))
        return g.add(g.mul_mat(x["down"], h), x["x"])

    name = f"decode_ffn(type_a={wtype.name.lower()},t={t},glu={'geglu' if gelu else 'swiglu'})"
    return OpCase(name, leaves, build, NMSE_LAYER)


def decode_fusion_cases() -> Iterator[OpCase]:
    for wtype in LEGACY:
        for t in (1, 3):
            yield attention_block(wtype, t)
            yield ffn_block(wtype, t)
    q8 = GGMLType.Q8_0
    yield attention_block(q8, 1, s=256)  # attention split over the cache, then merged
    yield attention_block(q8, 1, kv=F32, mode=ROPE_NEOX, n_dims=16, factors=True)
    yield attention_block(q8, 3, kv=F32, mode=ROPE_NEOX, n_dims=16, factors=True)
    # a prompt of 80 query rows a KV head (fattn_prompt on a GPU where it is on), then gemmq
    yield attention_block(q8, 40, s=128)
    yield ffn_block(q8, 1, gelu=True)
