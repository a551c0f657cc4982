"""Decode at depth on a CUDA device with the split attention kernel allowed more resident blocks a
multiprocessor (llmrt_cuda.lower.FATTN_RESIDENT_PER_SM: more parts of the KV length), as
`llmrt bench`'s depth test (tokens already in the context, then N decode steps, best of R). A
value past what the kernel's registers and shared memory let a multiprocessor hold at once is
skipped: its blocks could not all be resident, and they wait for each other.

    python benchmarks/cuda_attn_splits.py MODEL.gguf DEPTH[,DEPTH...] K[,K...] [N] [R]
"""

from __future__ import annotations

import sys

import llmrt_cuda.executable as executable
import llmrt_cuda.lower as lower
from llmrt.cli.bench import _fill, _run_test
from llmrt.engine import load
from llmrt.lower.passes import attention_heads


def resident_bound(head_dim: int, f16: int, chunk: int, heads: int) -> int:
    """Blocks of fattn_split a multiprocessor holds at once (registers, shared memory, threads)."""
    fn = executable.kernel("ops", f"fattn_split_{head_dim}_{f16}_{heads}")
    return executable._resident(fn, (heads * (head_dim + chunk) + 256 * 8 + 2 * head_dim) * 4)


def main() -> None:
    path, depths, values = sys.argv[1:4]
    n_gen = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    model = load(path, device="cuda:0")
    hp = model.hp
    head_dim = hp.head_dim
    for depth in (int(d) for d in depths.split(",")):
        for value in (int(v) for v in values.split(",")):
            heads = attention_heads(hp.n_head, hp.n_head_kv)
            nsplit = min(64, -(-depth // lower.FATTN_SPLIT_KEYS),
                         value * executable._sm_count() // (hp.n_head // heads))  # fmt: skip
            bound = resident_bound(head_dim, 1, -(-depth // max(nsplit, 1)), heads)
            if value > bound:
                print(f"cuda:0 d{depth} {value} blocks a multiprocessor: over the bound {bound}")
                continue
            lower.FATTN_RESIDENT_PER_SM = value  # read when a graph is compiled
            ctx = model.context(n_ctx=depth + n_gen + 256)
            _fill(ctx, hp.n_vocab, depth)
            _run_test(ctx, hp.n_vocab, 0, n_gen, depth)  # compiles the decode graph
            best = min(_run_test(ctx, hp.n_vocab, 0, n_gen, depth) for _ in range(repeats))
            print(f"cuda:0 d{depth} {value} blocks a multiprocessor (bound {bound}), {nsplit} "
                  f"parts: tg{n_gen} {n_gen / best:.1f} t/s")  # fmt: skip
            del ctx


if __name__ == "__main__":
    main()
