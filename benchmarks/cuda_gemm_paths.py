"""Prompt processing on a CUDA device with its legacy-quant prompt products on each path llmrt has
for them: gemmq (int8 tensor cores on q8 activations, the default from sm_80) and cuBLAS on f16
copies (the path before sm_80); in one process, as `llmrt bench`'s pp test (best of R).

    python benchmarks/cuda_gemm_paths.py MODEL.gguf [N_PROMPT] [R]
"""

from __future__ import annotations

import sys

import llmrt_cuda.executable as executable
from llmrt.cli.bench import _run_test
from llmrt.engine import load


def main() -> None:
    path = sys.argv[1]
    n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    model = load(path, device="cuda:0", n_gpu_layers=-1)
    lower = executable.lower
    for label, int8_mma in (("gemmq", True), ("cuBLAS f16", False)):
        # read when a graph is compiled: the product path, and nothing else, changes
        executable.lower = lambda graph, int8_mma=int8_mma, **_: lower(graph, int8_mma=int8_mma)
        ctx = model.context(n_ctx=n_prompt + 16)
        _run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0)  # compiles the prompt graph
        best = min(_run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0) for _ in range(repeats))
        print(f"cuda:0 {label}: pp{n_prompt} {n_prompt / best:.1f} t/s")
        del ctx
    executable.lower = lower


if __name__ == "__main__":
    main()
