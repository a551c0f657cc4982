"""Where an OpenCL decode step's wall time goes on the host, round after round: the enqueue of its
kernels (replay.CompiledEnqueue or the Python loop), the wait for its outputs, and the rest of
the engine's step (inputs, sampling-free bookkeeping), as `llmrt bench -n N` runs the steps. On
the H100 the 135M shape's OpenCL tg128 takes one of two speeds from one run to the next (about 300
and 530-600 t/s, nothing changed); this says which part of the step the slow runs spend longer in.

    python benchmarks/opencl_step_split.py MODEL [DEVICE=opencl:0] [ROUNDS=12] [STEPS=128]

Prints per round: t/s, then microseconds a step in the enqueue, the wait and the rest.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl

from llmrt.engine import load
from llmrt_opencl import program, replay

SPENT = {"enqueue": 0.0, "wait": 0.0}


def timed(name: str, fn):  # noqa: ANN001, ANN201
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - t

    return run


def main(model: str, device: str, rounds: int, steps: int) -> None:
    replay.CompiledEnqueue.enqueue = timed("enqueue", replay.CompiledEnqueue.enqueue)
    program.cl.wait_for_events = timed("wait", cl.wait_for_events)
    m = load(model, device=device)
    ctx = m.context(n_ctx=steps + 64)
    n_vocab = m.hp.n_vocab
    tokens = np.random.default_rng(0).integers(0, n_vocab, steps + 8).tolist()
    ctx.eval(tokens[:8])
    ctx.eval([tokens[8]])  # compiles the decode graph
    status = Path("/proc/self/status").read_text().splitlines()
    threads = next(line for line in status if line.startswith("Threads"))
    print(f"{threads.strip()} in this process; {len(os.sched_getaffinity(0))} cores it may use")
    for r in range(rounds):
        ctx.remove(0, 8)
        SPENT.update(enqueue=0.0, wait=0.0)
        t = time.perf_counter()
        for tok in tokens[8 : 8 + steps]:
            ctx.eval([tok])
        wall = time.perf_counter() - t
        enq, wait = SPENT["enqueue"], SPENT["wait"]
        us = 1e6 / steps
        print(f"round {r}: {steps / wall:7.1f} t/s; a step {wall * us:7.1f} us: enqueue "
              f"{enq * us:6.1f}, wait {wait * us:7.1f}, rest {(wall - enq - wait) * us:6.1f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:] + [""] * 4
    main(args[0], args[1] or "opencl:0", int(args[2] or 12), int(args[3] or 128))
