"""Tokenizers of the two real models, built once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrt.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="session")
def gemma3_tok(gemma3_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(gemma3_path)


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())
