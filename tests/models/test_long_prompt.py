"""Prompts longer than a micro-batch: split into ubatches of -ub tokens, only the last of which
wants logits. Each length must give the greedy tokens of the same prompt evaluated in one
micro-batch, on every device that computes (the cpu reference, lavapipe in CI, a GPU by hand).

The logits of the prompt's last token are compared too, loosely: summation orders that change
with the ubatch (BLAS blocking, one row against many) move the tiny random model's logits by up
to ~0.01 through its q8 and f16 roundings, while a wrong position or mask moves them by ~0.5."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import N_VOCAB

from llmrt.device import registry
from llmrt.engine import load
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph

# 2600: six ubatches, the last partial, into a cache of thousands of keys (5000 took lavapipe 4
# of CI's minutes, 2600 one)
LENGTHS = (1, 511, 512, 513, 1500, 2600)
N_NEW = 8


def _computes(device) -> bool:
    """Whether the device runs models at all (a listed OpenCL device may not compute yet)."""
    g = Graph()
    return device.supports_op(
        g.mul_mat(g.weight("w", (8, 32), GGMLType.Q8_0), g.input("x", (2, 32)))
    )


DEVICES = [d for d in registry().devices if _computes(d)]


def _greedy(model, prompt: list[int], n_ubatch: int) -> tuple[list[int], np.ndarray]:
    """N_NEW greedy tokens after the prompt, and the prompt's last logits."""
    ctx = model.context(n_ctx=len(prompt) + N_NEW + 8, n_ubatch=n_ubatch)
    first = logits = ctx.eval(prompt)
    tokens: list[int] = []
    for _ in range(N_NEW):
        tokens.append(int(np.argmax(logits)))
        logits = ctx.eval(tokens[-1:])
    return tokens, first


@pytest.mark.parametrize("device", DEVICES, ids=[d.id for d in DEVICES])
def test_prompt_over_several_ubatches_equals_one_ubatch(tiny_llama, device):
    model = load(tiny_llama, device=device)
    rng = np.random.default_rng(11)
    for n in LENGTHS:
        prompt = rng.integers(0, N_VOCAB, n).tolist()
        split, split_logits = _greedy(model, prompt, 512)
        whole, whole_logits = _greedy(model, prompt, n)
        assert split == whole, f"{n} tokens: ubatches of 512 give {split}, one ubatch {whole}"
        np.testing.assert_allclose(split_logits, whole_logits, rtol=0, atol=0.03,
                                   err_msg=f"{n}-token prompt")  # fmt: skip
