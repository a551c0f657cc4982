"""Milliseconds a decode step on the CPU backend, in-process: 16 tokens after a 30-token prompt,
three timings. To compare two commits on a machine whose memory bandwidth drifts, run both
interleaved (a checkout's `core` and `plugins/cpu` reached through PYTHONPATH symlinks named
`llmrt` and `llmrt_cpu` come before the editable install).

    python benchmarks/cpu_decode_ms.py MODEL
"""

from __future__ import annotations

import sys
import time

from llmrt import engine


def main() -> None:
    model = engine.load(sys.argv[1], device="cpu")
    ctx = model.context(n_ctx=256)
    ctx.eval(list(range(10, 40)))
    for _ in range(3):
        ctx.eval([100])
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(16):
            ctx.eval([100 + i])
        timings.append((time.perf_counter() - start) / 16 * 1e3)
    print("ms a token:", ", ".join(f"{ms:.2f}" for ms in timings))


if __name__ == "__main__":
    main()
