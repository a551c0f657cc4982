"""Prompt processing on a Vulkan device with its prompt matmuls on each shader llmrt has for them:
matmul.comp (f32 products on the shader cores) and matmul_coop (cooperative matrices); in one
process, as `llmrt bench`'s pp test (best of R).

    python benchmarks/vulkan_matmul_tiles.py MODEL.gguf DEVICE [N_PROMPT] [R]
"""

from __future__ import annotations

import sys

from llmrt.cli.bench import _run_test
from llmrt.device import get_device
from llmrt.engine import load


def main() -> None:
    path, device = sys.argv[1:3]
    n_prompt = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    dev = get_device(device)
    model = load(path, device=dev)
    rt = dev.runtime
    variant = rt.coopmat
    for label, coop in [("matmul.comp", None)] + ([(variant, variant)] if variant else []):
        rt.coopmat = coop  # read when a graph is lowered
        ctx = model.context(n_ctx=n_prompt + 16)
        _run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0)  # compiles the prompt graph
        best = min(_run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0) for _ in range(repeats))
        print(f"{device} {label}: pp{n_prompt} {n_prompt / best:.1f} t/s")
        del ctx
    rt.coopmat = variant


if __name__ == "__main__":
    main()
