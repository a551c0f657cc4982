"""Where llama.cpp's reference outputs lie: ../shared/refs by the checkout; LLMRT_REFS overrides."""

from __future__ import annotations

import os
from pathlib import Path

REFS = Path(os.environ.get("LLMRT_REFS", Path(__file__).resolve().parents[2] / "shared" / "refs"))
