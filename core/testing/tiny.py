"""A tiny random llama-architecture GGUF written with our own writer: fast engine and backend tests
(no tokenizer: graphs are fed token ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmrt.gguf import GGMLType, GGUFWriter, quantize

N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 320, 64, 4, 2, 96, 3


def write_tiny_llama(path: Path, weight_type: GGMLType = GGMLType.Q8_0, seed: int = 0,
                     n_head: int = N_HEAD, n_head_kv: int = N_HEAD_KV) -> Path:  # fmt: skip
    """The model at `path`; fewer heads make them wider (`n_head` 2: 32 wide, as wide as a q8
    block, which the kernels that write an attention's output as q8 blocks need)."""
    rng = np.random.default_rng(seed)
    head_dim = N_EMBD // n_head

    def matrix(rows: int, cols: int) -> np.ndarray:
        w = rng.normal(0, 0.5 / np.sqrt(cols), (rows, cols)).astype(np.float32)
        return quantize(w, weight_type)

    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", "tiny random llama")
        w.add("llama.vocab_size", N_VOCAB)
        w.add("llama.context_length", 1024)
        w.add("llama.embedding_length", N_EMBD)
        w.add("llama.block_count", N_LAYER)
        w.add("llama.feed_forward_length", N_FF)
        w.add("llama.attention.head_count", n_head)
        w.add("llama.attention.head_count_kv", n_head_kv)
        w.add("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add("llama.rope.freq_base", 10000.0)
        w.add_tensor("token_embd.weight", matrix(N_VOCAB, N_EMBD), weight_type, (N_VOCAB, N_EMBD))
        for il in range(N_LAYER):
            p = f"blk.{il}"
            w.add_tensor(f"{p}.attn_norm.weight", rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32))
            w.add_tensor(f"{p}.ffn_norm.weight", rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32))
            for name, rows, cols in (
                ("attn_q", n_head * head_dim, N_EMBD), ("attn_k", n_head_kv * head_dim, N_EMBD),
                ("attn_v", n_head_kv * head_dim, N_EMBD), ("attn_output", N_EMBD, N_EMBD),
                ("ffn_gate", N_FF, N_EMBD), ("ffn_up", N_FF, N_EMBD), ("ffn_down", N_EMBD, N_FF),
            ):  # fmt: skip
                w.add_tensor(f"{p}.{name}.weight", matrix(rows, cols), weight_type, (rows, cols))
        w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    return path
