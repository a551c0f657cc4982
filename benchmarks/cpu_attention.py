"""Milliseconds of the CPU backend's prompt attention kernel for one layer of a causal 512-token
prompt over an f16 cache, at the head shapes of SmolLM2, Gemma 3 270M and Llama 3.2 1B (best
of 5). Runs the kernel of whatever commit is checked out (its signature before and after the
scratch arguments), so two commits can be compared.

    python benchmarks/cpu_attention.py [threads]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from llmrt_cpu import jit, kernels, quant

SHAPES = {"SmolLM2": (9, 3, 64), "Gemma 3 270M": (4, 1, 256), "Llama 3.2 1B": (32, 8, 64)}


def main() -> None:
    jit.set_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    t = s = 512
    rng = np.random.default_rng(0)
    for name, (hq, hkv, d) in SHAPES.items():
        q = rng.standard_normal((t, hq, d)).astype(np.float32)
        k = rng.standard_normal((s, hkv, d)).astype(np.float16).view(np.uint16)
        v = rng.standard_normal((s, hkv, d)).astype(np.float16).view(np.uint16)
        visible = np.arange(s)[None, :] <= np.arange(t)[:, None]
        mask = np.where(visible, 0.0, -np.inf).astype(np.float32)
        out = np.empty((t, hq, d), np.float32)
        args = [q, k, v, mask, True, 1 / np.sqrt(d), 0.0, True, quant.F16_TO_F32]
        if hasattr(kernels, "attention_scratch"):
            shapes = kernels.attention_scratch(t, k.shape, v.shape)
            args += [np.empty(shape, np.float32) for shape in shapes]
        kernels.attention(*args, out)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            kernels.attention(*args, out)
            best = min(best, time.perf_counter() - start)
        print(f"{name} heads {hq}/{hkv} x {d}: {best * 1e3:.1f} ms a layer")


if __name__ == "__main__":
    main()
