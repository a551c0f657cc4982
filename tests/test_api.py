"""The Python API a user imports: llmrt.load, generate, tokenize, detokenize."""

from __future__ import annotations

import json

import pytest
from refs import REFS

import llmrt
from llmrt.errors import OutOfDeviceMemory, UsageError


def test_load_generate_tokenize(smollm2_path):
    model = llmrt.load(smollm2_path, device="cpu")
    case = json.loads((REFS / "smollm2-135m" / "greedy.json").read_text())["prompts"][0]
    assert model.tokenize(case["text"]) == case["prompt_ids"]
    text = "".join(model.generate(case["text"], n_predict=6, temperature=0, n_ctx=128))
    expected = model.detokenize(case["generated_ids"][:6])
    assert text == expected and text.startswith(" Paris")
    assert model.hp.n_layer == 30 and model.device.id == "cpu:0"


def test_known_model_names_and_lazy_tokenizer_export():
    assert llmrt.Tokenizer.__name__ == "Tokenizer"
    model = llmrt.load("smollm2-135m")
    assert model.path.name == "smollm2-135m-instruct-q4_1.gguf"


def test_generate_after_a_prompt_longer_than_a_ubatch(smollm2_path):
    """The first 512 tokens of the prompt want no logits; generate() used to crash on them."""
    model = llmrt.load(smollm2_path, device="cpu")
    ids = model.tokenize("The quick brown fox jumps over the lazy dog. " * 60)
    assert len(ids) > 512
    text = "".join(model.generate(ids, n_predict=2, temperature=0, n_ctx=1024))
    whole = model.context(n_ctx=1024, n_ubatch=1024).eval(ids)
    assert text.startswith(model.detokenize([int(whole.argmax())]))


def test_context_larger_than_memory_is_one_clear_error(smollm2_path):
    model = llmrt.load(smollm2_path, device="cpu")
    with pytest.raises(OutOfDeviceMemory, match=r"-c \d+ would fit"):
        model.context(n_ctx=100_000_000)
    with pytest.raises(UsageError, match="context size must be >= 0"):
        model.context(n_ctx=-5)
