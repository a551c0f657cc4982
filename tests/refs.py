"""Where llama.cpp's reference outputs lie: tests/fixtures/refs, a copy of the project's shared
refs (llama.cpp 0c1e570 through llama-cpp-python 0.3.36; README.md in each model's folder says how
they were made), committed so that the suite runs from a clone alone; LLMRT_REFS overrides."""

from __future__ import annotations

import os
from pathlib import Path

REFS = Path(os.environ.get("LLMRT_REFS", Path(__file__).resolve().parent / "fixtures" / "refs"))
