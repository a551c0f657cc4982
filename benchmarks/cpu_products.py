"""GMAC/s of the CPU backend's quantized products at a given activation row count, one product
at a time (activations prepared once, best of 5), for the shapes of the models in BENCHMARKS.md.

    python benchmarks/cpu_products.py [rows]   # 512: a prompt; 1: a decode step
"""

from __future__ import annotations

import sys
import time

import numpy as np

from llmrt.gguf import GGMLType as T
from llmrt.gguf import quantize
from llmrt_cpu import quant

SHAPES = [(T.Q5_0, 2048, 640), (T.Q4_1, 1536, 576), (T.Q4_K, 640, 2048), (T.Q6_K, 640, 2048),
          (T.Q4_0, 8192, 2048)]  # fmt: skip


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    rng = np.random.default_rng(0)
    for weight_type, m, k in SHAPES:
        raw = quantize(rng.uniform(-1, 1, (m, k)).astype(np.float32), weight_type).reshape(m, -1)
        x = rng.uniform(-1, 1, (rows, k)).astype(np.float32)
        table = quant.RowTable([raw], weight_type)
        prepared = quant.prepare_activations(weight_type, x)
        quant.mul_mat_rows(weight_type, table, prepared, rows)  # compile, repack
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            quant.mul_mat_rows(weight_type, table, prepared, rows)
            best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        quant.prepare_activations(weight_type, x)
        quantize_ms = (time.perf_counter() - start) * 1e3
        gmacs = m * k * rows / best / 1e9
        print(f"{weight_type.name} {m}x{k}, {rows} rows: {best * 1e3:.2f} ms, {gmacs:.1f} GMAC/s;"
              f" activations {quantize_ms:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
