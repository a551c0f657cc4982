"""What a Hugging Face architecture becomes in GGUF: its metadata and its tensors, as llama.cpp's
convert_hf_to_gguf.py writes them (so that llama.cpp runs the file too).

Each `HFArchitecture` maps the checkpoint's tensor names to GGUF names and transforms the values
where llama.cpp's graph expects another layout: Llama's q/k rows are permuted from the half-split
rotary layout of Hugging Face to the interleaved one of llama.cpp's normal rope; Gemma's norms
store 1 + weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt.errors import LlmrtError

LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
GLOBAL_TENSORS = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL = re.compile(r"(.+)\.(weight|bias)$")


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from [first halves; second halves] to interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@dataclass(frozen=True)
class HFArchitecture:
    gguf_arch: str
    # the GGUF name of a layer tensor, for the ones that differ from LAYER_TENSORS
    layer_names: dict[str, str] = field(default_factory=dict)
    transform: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray] | None = None
    extra_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a checkpoint tensor; None for one that llama.cpp does not keep."""
        if "rotary_emb.inv_freq" in hf_name:
            return None
        if m := _LAYER.match(hf_name):
            layer, part, kind = m.groups()
            short = self.layer_names.get(part, LAYER_TENSORS.get(part))
            return f"blk.{layer}.{short}.{kind}" if short else ""
        if m := _GLOBAL.match(hf_name):
            short = GLOBAL_TENSORS.get(m.group(1))
            return f"{short}.{m.group(2)}" if short else ""
        return ""

    def metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        a = self.gguf_arch
        n_head = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // n_head
        md = {
            f"{a}.context_length": config.get("max_position_embeddings", 2048),
            f"{a}.embedding_length": config["hidden_size"],
            f"{a}.feed_forward_length": config["intermediate_size"],
            f"{a}.block_count": config["num_hidden_layers"],
            f"{a}.attention.head_count": n_head,
            f"{a}.attention.head_count_kv": config.get("num_key_value_heads", n_head),
            f"{a}.rope.freq_base": float(config.get("rope_theta", 10000.0)),
            f"{a}.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        }
        if "rope_parameters" in config or "rope_scaling" in config:
            md[f"{a}.rope.freq_base"] = float(rope_parameters(config)["rope_theta"])
        if config.get("head_dim"):  # llama.cpp writes them whenever the config names a head size
            md[f"{a}.attention.key_length"] = head_dim
            md[f"{a}.attention.value_length"] = head_dim
        if self.extra_metadata is not None:
            md.update(self.extra_metadata(config))
        return md


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Rope theta and scaling: top-level keys before transformers 5, `rope_parameters` since."""
    merged = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    merged.update(config.get("rope_parameters") or {})
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ("default", "linear"):
        raise LlmrtError(f"rope scaling of type {kind!r} is not converted yet (default, linear)")
    merged["rope_type"] = kind
    return merged


def _llama_transform(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    n_head = config["num_attention_heads"]
    if name.endswith("attn_q.weight") or name.endswith("attn_q.bias"):
        return rope_permute(w, n_head)
    if name.endswith("attn_k.weight") or name.endswith("attn_k.bias"):
        return rope_permute(w, config.get("num_key_value_heads", n_head))
    return w


def _llama_metadata(config: dict[str, Any]) -> dict[str, Any]:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    md: dict[str, Any] = {"llama.rope.dimension_count": head_dim,
                          "llama.vocab_size": config["vocab_size"]}  # fmt: skip
    rope = rope_parameters(config)
    if rope["rope_type"] == "linear":
        md["llama.rope.scaling.type"] = "linear"
        md["llama.rope.scaling.factor"] = float(rope["factor"])
    return md


def _gemma3_transform(name: str, w: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    return w + 1.0 if name.endswith("norm.weight") else w  # Gemma's RMSNorm scales by 1 + w


def _gemma3_metadata(config: dict[str, Any]) -> dict[str, Any]:
    rope = config.get("rope_parameters") or {}
    theta = rope.get("full_attention", rope).get("rope_theta", config.get("rope_theta", 1e6))
    head_dim = config.get("head_dim", 256)
    md: dict[str, Any] = {
        "gemma3.context_length": config.get("max_position_embeddings", 131072),
        "gemma3.attention.head_count": config.get("num_attention_heads", 8),
        "gemma3.attention.head_count_kv": config.get("num_key_value_heads", 4),
        "gemma3.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "gemma3.attention.key_length": head_dim,
        "gemma3.attention.value_length": head_dim,
        "gemma3.rope.freq_base": float(theta),
        "tokenizer.ggml.add_space_prefix": False,
    }
    if "sliding_attention" in rope:
        md["gemma3.rope.freq_base_swa"] = float(rope["sliding_attention"].get("rope_theta", 1e4))
    if config.get("final_logit_softcapping"):
        md["gemma3.final_logit_softcapping"] = float(config["final_logit_softcapping"])
    if config.get("sliding_window_pattern") != 1:
        md["gemma3.attention.sliding_window"] = config["sliding_window"]
    return md


HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "LlamaForCausalLM": HFArchitecture(
        "llama", transform=_llama_transform, extra_metadata=_llama_metadata
    ),  # fmt: skip
    "MistralForCausalLM": HFArchitecture(
        "llama", transform=_llama_transform, extra_metadata=_llama_metadata
    ),  # fmt: skip
    "Qwen2ForCausalLM": HFArchitecture("qwen2"),
    "Gemma3ForCausalLM": HFArchitecture(
        "gemma3",
        layer_names={"post_attention_layernorm": "post_attention_norm"},
        transform=_gemma3_transform,
        extra_metadata=_gemma3_metadata,
    ),
}


def hf_architecture(config: dict[str, Any]) -> tuple[str, HFArchitecture]:
    names = config.get("architectures") or []
    for name in names:
        if name in HF_ARCHITECTURES:
            return name, HF_ARCHITECTURES[name]
    raise LlmrtError(
        f"cannot convert {', '.join(names) or 'a checkpoint without architectures'}; "
        f"supported: {', '.join(HF_ARCHITECTURES)}"
    )
