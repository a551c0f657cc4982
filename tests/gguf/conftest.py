"""Fixtures of the GGUF tests: our readers of the real models, and the `gguf` package's (oracle)."""

from __future__ import annotations

import pytest

from llmrt.gguf import GGUFReader


@pytest.fixture(scope="session")
def smollm2(smollm2_path) -> GGUFReader:
    return GGUFReader(smollm2_path)


@pytest.fixture(scope="session")
def gemma3(gemma3_path) -> GGUFReader:
    return GGUFReader(gemma3_path)
