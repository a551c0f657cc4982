"""The llama-architecture graphs of ../shared/tools/synth_gguf.py's model shapes, built from
metadata and tensor shapes alone (no GGUF file, no weights): for plan tests that pin down which
kernels a backend launches on the shapes DESIGN.md benchmarks.

The metadata keys, tensor names, shapes and types are those synth_gguf.py writes: every matrix
(the token embedding too) in the file's quant type, norms in f32, `output.weight` only where the
head is not tied to the embedding.
"""

from __future__ import annotations

from typing import Any

from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph
from llmrt.models import Shape, get_architecture

# synth_gguf.py's SHAPES (llama3-70b left out: it adds nothing the 8B does not exercise)
# n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, tied, rope_base, ctx
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool, float, int]] = {
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True, 100000.0, 8192),
    "llama32-1b": (2048, 16, 32, 8, 8192, 128256, True, 500000.0, 8192),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256, False, 500000.0, 8192),
}
# general.file_type as synth_gguf writes it (llama.cpp's LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {GGMLType.Q4_0: 2, GGMLType.Q8_0: 7}


def metadata(shape_name: str, qtype: GGMLType) -> dict[str, Any]:
    """The GGUF metadata synth_gguf.py writes, less the tokenizer's (the graph does not read it:
    `llama.vocab_size` gives the vocabulary's size)."""
    n_embd, n_layer, n_head, n_kv, n_ff, n_vocab, _, rope_base, ctx = SHAPES[shape_name]
    return {
        "general.architecture": "llama",
        "general.name": f"synthetic-{shape_name}-{qtype.name.lower()}",
        "general.file_type": FILE_TYPES[qtype],
        "llama.context_length": ctx,
        "llama.embedding_length": n_embd,
        "llama.block_count": n_layer,
        "llama.feed_forward_length": n_ff,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_kv,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": rope_base,
        "llama.rope.dimension_count": n_embd // n_head,
        "llama.vocab_size": n_vocab,
    }


def weight_meta(shape_name: str, qtype: GGMLType) -> dict[str, tuple[tuple[int, ...], GGMLType]]:
    """{tensor name: (numpy-order shape, ggml type)}, as a GGUFReader of the file would give."""
    n_embd, n_layer, n_head, n_kv, n_ff, n_vocab, tied, _, _ = SHAPES[shape_name]
    kv = n_kv * (n_embd // n_head)
    f32 = GGMLType.F32
    meta: dict[str, tuple[tuple[int, ...], GGMLType]] = {
        "token_embd.weight": ((n_vocab, n_embd), qtype),
        "output_norm.weight": ((n_embd,), f32),
    }
    if not tied:
        meta["output.weight"] = ((n_vocab, n_embd), qtype)
    for i in range(n_layer):
        p = f"blk.{i}."
        meta[p + "attn_norm.weight"] = ((n_embd,), f32)
        meta[p + "attn_q.weight"] = ((n_embd, n_embd), qtype)
        meta[p + "attn_k.weight"] = ((kv, n_embd), qtype)
        meta[p + "attn_v.weight"] = ((kv, n_embd), qtype)
        meta[p + "attn_output.weight"] = ((n_embd, n_embd), qtype)
        meta[p + "ffn_norm.weight"] = ((n_embd,), f32)
        meta[p + "ffn_gate.weight"] = ((n_ff, n_embd), qtype)
        meta[p + "ffn_up.weight"] = ((n_ff, n_embd), qtype)
        meta[p + "ffn_down.weight"] = ((n_embd, n_ff), qtype)
    return meta


def decode_graph(shape_name: str, qtype: GGMLType, n_tokens: int = 1, n_kv: int = 256) -> Graph:
    """The forward graph of a batch of `n_tokens` over `n_kv` cache cells (a cache of n_kv
    cells), wanting the last row's logits: what the engine builds for a decode step (1) or a
    prompt."""
    arch = get_architecture("llama")
    hp = arch.hparams(metadata(shape_name, qtype))
    return arch.build(hp, Shape(n_tokens, n_kv, 1, n_kv), weight_meta(shape_name, qtype))


def file_graph(path: str, n_tokens: int, n_kv: int = 256) -> Graph:
    """The graph of a GGUF file's model for `n_tokens` tokens over `n_kv` cache cells."""
    from llmrt.gguf import GGUFReader

    reader = GGUFReader(path)
    arch = get_architecture(reader.metadata["general.architecture"])
    meta = {t.name: (t.shape, t.type) for t in reader.tensors}
    return arch.build(arch.hparams(reader.metadata), Shape(n_tokens, n_kv, 1, n_kv), meta)
