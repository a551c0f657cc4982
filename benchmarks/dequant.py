"""Reference dequantization throughput per ggml type: GB/s of float32 output.

    python benchmarks/dequant.py [--mib 16] [--repeat 3]

Random blocks (scale fields set to finite f16 values) of every type are dequantized with
llmrt.gguf.dequantize; the best of N runs is reported, with gguf.quants.dequantize on the same
bytes (as rows of 4096) next to it where gguf has a dequantizer. gguf returns F32 as a
zero-copy view, so its F32 figure is not a conversion rate.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from llmrt.gguf import GGMLType, dequantize

ROW = 4096  # elements per row, as in a 4096-wide weight matrix


def best_s(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=16, help="float32 output per run, MiB")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import gguf
    import gguf.quants as gq

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    print("| type | llmrt GB/s | gguf GB/s |")
    print("|---|---|---|")
    for t in GGMLType:
        n = int(args.mib * 2**20 / 4) // 256 * 256
        nblocks = n // t.block_size
        raw = rng.integers(0, 256, (nblocks, t.type_size), dtype=np.uint8)
        if t.type_size >= 2 and t.name not in ("MXFP4", "NVFP4", "IQ1_M", "F32", "F64"):
            raw[:, :2] = rng.uniform(-1, 1, (nblocks, 1)).astype("<f2").view(np.uint8)
        if t in (GGMLType.F32, GGMLType.F64):
            raw = rng.standard_normal(n).astype("<f4" if t == GGMLType.F32 else "<f8")
            raw = raw.view(np.uint8).reshape(nblocks, t.type_size)
        gb = n * 4 / 1e9
        ours = gb / best_s(lambda raw=raw, t=t, n=n: dequantize(raw, t, (n,)), args.repeat)
        theirs = "-"
        qt = gguf.GGMLQuantizationType(int(t))
        if qt in gq._type_traits or t in (GGMLType.F32, GGMLType.F16):
            rows = raw.reshape(n // ROW, -1)  # gguf works row by row: give it 4096-wide rows
            theirs = f"{gb / best_s(lambda r=rows, q=qt: gq.dequantize(r, q), args.repeat):.2f}"
        print(f"| {t.name} | {ours:.2f} | {theirs} |")


if __name__ == "__main__":
    main()
