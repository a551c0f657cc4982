"""Shared fixtures: the real models (pulled once into the user cache) and the reference fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmrt import pull

# llama.cpp's own outputs, laid beside the checkout (../shared/refs); LLMRT_REFS overrides.
REFS = Path(os.environ.get("LLMRT_REFS", Path(__file__).resolve().parents[2] / "shared" / "refs"))


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
