"""Shared fixtures: the real models (pulled once into the user cache) and the reference fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from refs import REFS

from llmrt import pull


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return pull.pull("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return pull.pull("gemma3-270m", quiet=True)


@pytest.fixture(scope="session")
def refs_dir() -> Path:
    if not REFS.is_dir():
        pytest.fail(f"reference fixtures not found at {REFS}; set LLMRT_REFS")
    return REFS


@pytest.fixture(scope="session")
def tiny_gguf_with_vocab(tmp_path_factory) -> Path:
    """A tiny random llama model (tests/models/tiny.py) for commands that only need speed."""
    from models.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")
