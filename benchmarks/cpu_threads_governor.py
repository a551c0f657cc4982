"""Decode speed on the CPU backend with -t 1, -t 2 and no -t (the thread governor), interleaved:
a machine whose other jobs come and go is where the three differ.

    python benchmarks/cpu_threads_governor.py MODEL [ROUNDS] [TOKENS]

Each round decodes TOKENS tokens (default 256) after a 30-token prompt with each setting in turn,
and prints the mean milliseconds a token and the load average beside it.
"""

from __future__ import annotations

import os
import sys
import time

from llmrt import engine


def decode_ms(path: str, threads: int | None, tokens: int) -> float:
    ctx = engine.load(path, device="cpu", threads=threads).context(n_ctx=tokens + 64)
    ctx.eval(list(range(10, 40)))
    start = time.perf_counter()
    for i in range(tokens):
        ctx.eval([100 + i % 200])
    return (time.perf_counter() - start) / tokens * 1e3


def main() -> None:
    path = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    for r in range(rounds):
        settings = (("-t 1", 1), ("-t 2", 2), ("auto", None))
        row = {name: decode_ms(path, t, tokens) for name, t in settings}
        cells = "  ".join(f"{name} {ms:6.2f}" for name, ms in row.items())
        print(f"round {r + 1}: ms a token  {cells}  (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
