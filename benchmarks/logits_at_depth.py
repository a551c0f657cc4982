"""Logits of a few decode steps after DEPTH tokens of context (random tokens, as `llmrt bench -d`),
saved to compare two trees' or two settings' attention deep in a context:

    python benchmarks/logits_at_depth.py MODEL.gguf DEVICE DEPTH OUT.npz
"""

from __future__ import annotations

import sys

import numpy as np

from llmrt.engine import load


def main() -> None:
    path, device, depth, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = load(path, device=device, n_gpu_layers=-1)
    ctx = model.context(n_ctx=depth + 64)
    ctx.eval(np.random.default_rng(1).integers(0, model.hp.n_vocab, depth).tolist())
    rows, token = [], 1
    for _ in range(6):
        rows.append(ctx.eval([token]))
        token = int(np.argmax(rows[-1]))
    np.savez(out, logits=np.stack(rows))


if __name__ == "__main__":
    main()
