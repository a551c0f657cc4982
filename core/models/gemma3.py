"""Gemma 3 decoder: the forward graph of one batch (inputs and state as in llama.py).

Differs from llama: embeddings scaled by sqrt(n_embd); per-head RMS norms of q and k; norms after
attention and after the FFN as well as before; GeGLU (tanh GELU); NEOX rope; five of every six
layers attend to a sliding window with their own rope base (`mask_swa`), the sixth to everything.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from llmrt.ir import ROPE_NEOX, Graph, Tensor
from llmrt.models import Architecture, HParams, Shape, llama

SWA_PATTERN = 6  # llama.cpp's value for gemma3: every sixth layer is global
ROPE_BASE_SWA = 10000.0


def hparams(md: dict[str, Any]) -> HParams:
    hp = llama.hparams(md)
    return dataclasses.replace(
        hp,
        norm_eps=float(md.get("gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        swa_window=int(md.get("gemma3.attention.sliding_window", 0)),
        swa_pattern=SWA_PATTERN,
        rope_base_swa=float(md.get("gemma3.rope.freq_base_swa", ROPE_BASE_SWA)),
    )


def build(hp: HParams, shape: Shape, weights: dict[str, Any]) -> Graph:
    g = Graph(f"{hp.arch} T={shape.n_tokens} kv={shape.n_kv}")
    io = llama.inputs(g, shape)
    mask_swa = g.input("mask_swa", (shape.n_tokens, shape.n_kv)) if hp.swa_pattern else None
    T, H, Hkv, D = shape.n_tokens, hp.n_head, hp.n_head_kv, hp.head_dim  # noqa: N806

    def w(name: str) -> Tensor:
        shape_, type_ = weights[name]
        return g.weight(name, shape_, type_)

    def norm(x: Tensor, name: str) -> Tensor:
        return g.mul(g.rms_norm(x, hp.norm_eps), w(name))

    x = g.scale(g.get_rows(w("token_embd.weight"), io["tokens"]), math.sqrt(hp.n_embd))
    for il in range(hp.n_layer):
        g.layer = il
        p = f"blk.{il}"
        swa = hp.is_swa(il)
        h = norm(x, f"{p}.attn_norm.weight")
        q = g.reshape(g.mul_mat(w(f"{p}.attn_q.weight"), h), T, H, D)  # [T, H, D]
        k = g.reshape(g.mul_mat(w(f"{p}.attn_k.weight"), h), T, Hkv, D)  # [T, Hkv, D]
        v = g.reshape(g.mul_mat(w(f"{p}.attn_v.weight"), h), T, Hkv, D)
        q = norm(q, f"{p}.attn_q_norm.weight")
        k = norm(k, f"{p}.attn_k_norm.weight")
        base = hp.rope_base_swa if swa else hp.rope_base
        scale = 1.0 if swa else hp.rope_scale
        q = g.rope(q, io["pos"], n_dims=hp.rope_dims, mode=ROPE_NEOX, freq_base=base,
                   freq_scale=scale)  # fmt: skip
        k = g.rope(k, io["pos"], n_dims=hp.rope_dims, mode=ROPE_NEOX, freq_base=base,
                   freq_scale=scale)  # fmt: skip
        mask = mask_swa if swa else io["mask"]
        a = llama.attend(g, hp, shape, il, io, q, k, v, mask, 1.0 / math.sqrt(D))
        a = g.mul_mat(w(f"{p}.attn_output.weight"), g.reshape(a, T, H * D))
        x = g.add(x, norm(a, f"{p}.post_attention_norm.weight"))
        h = norm(x, f"{p}.ffn_norm.weight")
        up = g.geglu(g.mul_mat(w(f"{p}.ffn_gate.weight"), h), g.mul_mat(w(f"{p}.ffn_up.weight"), h))
        down = g.mul_mat(w(f"{p}.ffn_down.weight"), up)
        x = g.add(x, norm(down, f"{p}.post_ffw_norm.weight"))
    g.layer = None
    x = g.get_rows(x, io["out_rows"])
    x = norm(x, "output_norm.weight")
    if shape.embeddings:  # the hidden states themselves: no lm head
        g.output("embd", x)
        return g
    head = "output.weight" if "output.weight" in weights else "token_embd.weight"
    g.output("logits", g.mul_mat(w(head), x))
    return g


ARCHITECTURES = [Architecture("gemma3", hparams, build)]
