"""Decode at depth on a Vulkan device with attention split into more or fewer parts: how many
workgroups a step's attention aims at (llmrt_vulkan.lower.ATTN_WORKGROUPS, parts of at most
ATTN_MAX_SPLITS), in one process, as `llmrt bench`'s depth test (tokens already in the context,
then N decode steps, best of R).

    python benchmarks/vulkan_attn_splits.py MODEL.gguf DEVICE DEPTH[,DEPTH...] WG[,WG...] [N] [R]
"""

from __future__ import annotations

import sys

import llmrt_vulkan.lower as lower
from llmrt.cli.bench import _fill, _run_test
from llmrt.engine import load


def main() -> None:
    path, device, depths, targets = sys.argv[1:5]
    n_gen = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    repeats = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    model = load(path, device=device)
    for depth in (int(d) for d in depths.split(",")):
        for target in (int(w) for w in targets.split(",")):
            lower.ATTN_WORKGROUPS = target  # read when a graph is lowered: a new context's graphs
            ctx = model.context(n_ctx=depth + n_gen + 256)
            _fill(ctx, model.hp.n_vocab, depth)
            _run_test(ctx, model.hp.n_vocab, 0, n_gen, depth)  # compiles the decode graph
            best = min(_run_test(ctx, model.hp.n_vocab, 0, n_gen, depth) for _ in range(repeats))
            print(
                f"{device} d{depth} attention workgroups {target}: tg{n_gen} {n_gen / best:.1f} t/s"
            )
            del ctx


if __name__ == "__main__":
    main()
