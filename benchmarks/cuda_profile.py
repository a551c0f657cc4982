"""Where a CUDA decode step's time goes: the engine around it, the program's run(), the graph
replay alone, and each kind of step (launched one by one between CUDA events).

    python benchmarks/cuda_profile.py MODEL.gguf [n_ctx]
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import cupy as cp
import numpy as np

from llmrt.engine import load


def main() -> None:
    path = sys.argv[1]
    n_ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    model = load(path, device="cuda:0", n_gpu_layers=99)
    ctx = model.context(n_ctx=n_ctx)
    ctx.eval([1, 2, 3, 4])
    for _ in range(5):
        ctx.eval([5])
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.eval([7])
    full = (time.perf_counter() - t0) / n
    exe = next(iter(v for k, v in ctx.graphs.items() if k[0] == 1))
    progs = getattr(exe, "programs", [exe])
    prog = next(p for p in progs if hasattr(p, "plan"))
    inputs = {key: np.zeros(shape, host.dtype) for key, host, shape in prog.inputs}
    t0 = time.perf_counter()
    for _ in range(n):
        prog.run(inputs)
    run = (time.perf_counter() - t0) / n
    stream = prog.stream
    replay = float("nan")
    if prog.graph is not None:
        prog.graph.launch(stream)
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            prog.graph.launch(stream)
        stream.synchronize()
        replay = (time.perf_counter() - t0) / 200
    # one by one between events
    steps = prog.plan.steps
    first = len(prog.inputs)
    per: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    with stream:
        for _ in range(3):
            events = []
            for step, item in zip(steps, prog.launches[first : first + len(steps)], strict=True):
                a, b = cp.cuda.Event(), cp.cuda.Event()
                a.record(stream)
                prog._launch_one(item)
                b.record(stream)
                events.append((step, a, b))
            stream.synchronize()
        for step, a, b in events:
            key = step.op
            if step.op == "mmv":
                key = f"mmv m={step.params['m']} k={step.params['k']}"
            per[key] += cp.cuda.get_elapsed_time(a, b) * 1e3
            count[key] += 1
    print(f"{path}: {len(steps)} steps, graph={'yes' if prog.graph is not None else 'no'}")
    print(f"  ctx.eval {full * 1e6:.0f} us ({1 / full:.0f} t/s), program.run {run * 1e6:.0f} us, "
          f"graph replay {replay * 1e6:.0f} us")  # fmt: skip
    total = sum(per.values())
    print(f"  one by one (kernel time incl. gaps between events): {total:.0f} us")
    for key, us in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"    {key:32s} {count[key]:4d} x {us / count[key]:7.2f} us = {us:8.1f} us")


if __name__ == "__main__":
    main()
