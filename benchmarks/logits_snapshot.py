"""Logits of a fixed prompt and a few greedy decode steps, saved to compare two trees' kernels:

    python benchmarks/logits_snapshot.py MODEL.gguf DEVICE OUT.npz [N_PROMPT]

N_PROMPT (default 40) past CUDA's MMVQ_MAX_T (64) takes the prompt GEMMs.

Used by benchmarks/gpu_session.sh: the same graphs launched the same kernels before and after a
refactor only if these match bit for bit.
"""

from __future__ import annotations

import sys

import numpy as np

from llmrt.engine import load


def main() -> None:
    path, device, out = sys.argv[1], sys.argv[2], sys.argv[3]
    n_prompt = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    ctx = load(path, device=device, n_gpu_layers=-1).context(n_ctx=n_prompt + 216)
    prompt = [(i * 7919) % 30000 + 300 for i in range(n_prompt)]
    rows = [ctx.eval(prompt, all_logits=True)]
    token = int(np.argmax(rows[0][-1]))
    for _ in range(8):
        rows.append(ctx.eval([token])[None, :])
        token = int(np.argmax(rows[-1][-1]))
    np.savez(out, logits=np.concatenate(rows))


if __name__ == "__main__":
    main()
