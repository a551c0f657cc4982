"""Model architectures: each builds the forward graph of one batch from GGUF hyperparameters.

Architectures arrive through the ``register_architectures`` hook, the built-in ones too (this
package is the ``models`` entry point), so a third party adds one the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType
from llmrt.hookspecs import hookimpl
from llmrt.ir import Graph


@dataclass(frozen=True)
class HParams:
    """What the engine and the builders need from a GGUF's metadata."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # of keys and values
    n_ff: int
    norm_eps: float
    rope_base: float
    rope_scale: float = 1.0
    rope_dims: int = 0
    # Sliding-window attention (gemma3): layers whose index is not ≡ -1 mod swa_pattern see only
    # the last swa_window positions and use rope_base_swa.
    swa_window: int = 0
    swa_pattern: int = 0
    rope_base_swa: float = 10000.0
    extra: dict[str, Any] = field(default_factory=dict)

    def is_swa(self, layer: int) -> bool:
        return self.swa_pattern > 0 and (layer + 1) % self.swa_pattern != 0


@dataclass(frozen=True)
class Shape:
    """What a graph is built for: the batch's tokens, the KV cells it sees (a prefix of the
    cache), the rows of output wanted, and the cache's size and type.

    `embeddings`: the graph's output is `embd` f32[n_out, n_embd], the final hidden states of the
    wanted rows (after the output norm, before the lm head, which is not computed), instead of
    `logits` f32[n_out, n_vocab]. The engine pools them (llama.cpp's embeddings mode)."""

    n_tokens: int
    n_kv: int
    n_outputs: int
    n_ctx: int
    kv_type: GGMLType = GGMLType.F16
    embeddings: bool = False


@dataclass(frozen=True)
class Architecture:
    name: str
    hparams: Callable[[dict[str, Any]], HParams]
    # build(hp, shape, weights) -> Graph; weights maps a tensor name to (shape, ggml type)
    build: Callable[[HParams, Shape, dict[str, Any]], Graph]


def architectures() -> dict[str, Architecture]:
    from llmrt.plugins import get_plugins

    found: dict[str, Architecture] = {}
    plugins = get_plugins()

    def register(name: str, arch: Architecture) -> None:
        if name in found:
            plugins.fail(plugins.current_plugin, "register_architectures", f"'{name}' twice")
        else:
            found[name] = arch

    plugins.call("register_architectures", register=register)
    return found


def get_architecture(name: str) -> Architecture:
    archs = architectures()
    if name not in archs:
        raise LlmrtError(
            f"unsupported architecture '{name}'; supported: {', '.join(sorted(archs))}"
        )
    return archs[name]


@hookimpl
def register_architectures(register):
    from llmrt.models import gemma3, llama

    for module in (llama, gemma3):
        for arch in module.ARCHITECTURES:
            register(arch.name, arch)
