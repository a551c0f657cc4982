"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral-like, Qwen2): the forward graph of one batch.

Inputs of each graph: `tokens` i32[T], `pos` i32[T], `kv_cells` i32[T] (the cache cells the batch
writes), `mask` f32[T, n_kv] (0 where a token may attend to a cell, -inf elsewhere) and `out_rows`
i32[n_out] (the batch rows whose logits are wanted). State: `cache_k.{il}`, `cache_v.{il}`, each
[n_ctx, n_head_kv, head_dim]. Output: `logits` f32[n_out, n_vocab], or with `shape.embeddings`
`embd` f32[n_out, n_embd] (the normed hidden states the lm head would read).
"""

from __future__ import annotations

import math
from typing import Any

from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph, Tensor
from llmrt.models import Architecture, HParams, Shape


def hparams(md: dict[str, Any]) -> HParams:
    arch = md["general.architecture"]

    def key(name: str, default: Any = None) -> Any:
        value = md.get(f"{arch}.{name}", default)
        if value is None:
            raise LlmrtError(f"model metadata lacks '{arch}.{name}'")
        return value

    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    tokens = md.get("tokenizer.ggml.tokens")
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    factor = float(md.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0)
    return HParams(
        arch=arch,
        n_vocab=int(key("vocab_size", len(tokens) if tokens is not None else None)),
        n_ctx_train=int(key("context_length")),
        n_embd=n_embd,
        n_layer=int(key("block_count")),
        n_head=n_head,
        n_head_kv=int(key("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(key("feed_forward_length")),
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(key("rope.freq_base", 10000.0)),
        rope_scale=1.0 / factor if scaling == "linear" else 1.0,
        rope_dims=int(key("rope.dimension_count", head_dim)),
    )


def inputs(g: Graph, shape: Shape) -> dict[str, Tensor]:
    """The per-batch inputs every decoder here takes."""
    t, i32 = shape.n_tokens, GGMLType.I32
    return {
        "tokens": g.input("tokens", (t,), i32),
        "pos": g.input("pos", (t,), i32),
        "kv_cells": g.input("kv_cells", (t,), i32),
        "mask": g.input("mask", (t, shape.n_kv)),
        "out_rows": g.input("out_rows", (shape.n_outputs,), i32),
    }


def attend(
    g: Graph, hp: HParams, shape: Shape, il: int, io: dict[str, Tensor], q: Tensor, k: Tensor,
    v: Tensor, mask: Tensor, scale: float,
) -> Tensor:  # fmt: skip
    """Write the batch's k, v [T, Hkv, D] into layer il's cache; attend over the visible cells."""
    cache = (shape.n_ctx, hp.n_head_kv, hp.head_dim)
    ck = g.set_rows(g.state(f"cache_k.{il}", cache, shape.kv_type), io["kv_cells"], k)
    cv = g.set_rows(g.state(f"cache_v.{il}", cache, shape.kv_type), io["kv_cells"], v)
    return g.flash_attn_ext(q, g.rows(ck, shape.n_kv), g.rows(cv, shape.n_kv), mask, scale=scale)


def build(hp: HParams, shape: Shape, weights: dict[str, Any]) -> Graph:
    g = Graph(f"{hp.arch} T={shape.n_tokens} kv={shape.n_kv}")
    io = inputs(g, shape)
    T, H, Hkv, D = shape.n_tokens, hp.n_head, hp.n_head_kv, hp.head_dim  # noqa: N806

    def w(name: str) -> Tensor:
        shape_, type_ = weights[name]
        return g.weight(name, shape_, type_)

    def linear(name: str, x: Tensor) -> Tensor:
        y = g.mul_mat(w(f"{name}.weight"), x)
        return g.add(y, w(f"{name}.bias")) if f"{name}.bias" in weights else y

    rope_factors = w("rope_freqs.weight") if "rope_freqs.weight" in weights else None
    x = g.get_rows(w("token_embd.weight"), io["tokens"])  # [T, n_embd]
    for il in range(hp.n_layer):
        g.layer = il
        p = f"blk.{il}"
        h = g.mul(g.rms_norm(x, hp.norm_eps), w(f"{p}.attn_norm.weight"))
        q = g.reshape(linear(f"{p}.attn_q", h), T, H, D)  # [T, H, D]
        k = g.reshape(linear(f"{p}.attn_k", h), T, Hkv, D)  # [T, Hkv, D]
        v = g.reshape(linear(f"{p}.attn_v", h), T, Hkv, D)
        rope = dict(n_dims=hp.rope_dims, mode=ROPE_MODES[hp.arch], freq_base=hp.rope_base,
                    freq_scale=hp.rope_scale, freq_factors=rope_factors)  # fmt: skip
        q = g.rope(q, io["pos"], **rope)
        k = g.rope(k, io["pos"], **rope)
        a = attend(g, hp, shape, il, io, q, k, v, io["mask"], 1.0 / math.sqrt(D))
        x = g.add(x, linear(f"{p}.attn_output", g.reshape(a, T, H * D)))
        h = g.mul(g.rms_norm(x, hp.norm_eps), w(f"{p}.ffn_norm.weight"))
        up = g.swiglu(linear(f"{p}.ffn_gate", h), linear(f"{p}.ffn_up", h))
        x = g.add(x, linear(f"{p}.ffn_down", up))
    g.layer = None
    x = g.get_rows(x, io["out_rows"])  # only the rows whose logits are wanted
    x = g.mul(g.rms_norm(x, hp.norm_eps), w("output_norm.weight"))
    if shape.embeddings:  # the hidden states themselves: no lm head
        g.output("embd", x)
        return g
    head = "output.weight" if "output.weight" in weights else "token_embd.weight"  # tied
    g.output("logits", g.mul_mat(w(head), x))
    return g


# llama.cpp's llama_model_rope_type: Qwen2 keeps Hugging Face's half-split rotary layout (NEOX),
# while converting a Llama permutes its q/k rows to pairs (normal rope).
ROPE_MODES = {
    "llama": ROPE_NORMAL,
    "mistral": ROPE_NORMAL,
    "smollm": ROPE_NORMAL,
    "qwen2": ROPE_NEOX,
}

ARCHITECTURES = [Architecture(name, hparams, build) for name in ROPE_MODES]
