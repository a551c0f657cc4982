"""Tokenizers of the two real models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrt.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="session")
def gemma3_tok(gemma3_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(gemma3_path)
