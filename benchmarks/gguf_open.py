"""Time to open GGUF files with llmrt.gguf.GGUFReader next to gguf.GGUFReader, same files, same run.

    python benchmarks/gguf_open.py FILE.gguf [FILE.gguf ...] [--repeat N]

Prints one markdown row per file: best-of-N wall time of the constructor (the header parse and
validation; no tensor data is read by either). gguf's reader is timed once when it takes over 1 s.
"""

from __future__ import annotations

import argparse
import os
import time

from llmrt.gguf import GGUFReader


def best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if best > 1.0:
            break
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import gguf

    print("| file | size | tensors | metadata keys | llmrt (ms) | gguf (ms) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for f in args.files:
        r = GGUFReader(f)
        ours = best_ms(lambda f=f: GGUFReader(f), args.repeat)
        theirs = best_ms(lambda f=f: gguf.GGUFReader(f), args.repeat)
        size = os.path.getsize(f) / 2**20
        print(
            f"| {os.path.basename(f)} | {size:,.0f} MiB | {len(r.tensors)} | {len(r.metadata)} "
            f"| {ours:.1f} | {theirs:.0f} | {theirs / ours:.0f}× |"
        )


if __name__ == "__main__":
    main()
