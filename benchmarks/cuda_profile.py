"""Where a CUDA decode step's time goes: the engine around it, the program's run(), the graph
replay alone, and each kind of step (timed as a captured graph of 20 launches of itself). With
N_PROMPT, where a prompt of that many tokens goes instead: the whole prompt, then each step of
its program timed by events around 5 launches of it (cuBLAS's included).

    python benchmarks/cuda_profile.py MODEL.gguf [n_ctx] [N_PROMPT]

GEMMQ=1 in the environment puts the prompt products on gemmq whatever the lowering's default.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict

import cupy as cp
import numpy as np

from llmrt.engine import load


def _step_key(step) -> str:
    if step.op in ("mmv", "mmvq", "gemm", "gemmq"):
        p = step.params
        ms = p.get("ms", [p["m"]]) * (2 if "glu" in p else 1)
        return f"{step.op} m={'+'.join(map(str, ms))} k={p['k']}"
    return step.op


def prompt(model, n_ctx: int, n_prompt: int) -> None:
    ctx = model.context(n_ctx=max(n_ctx, n_prompt + 16))
    tokens = [(i * 7919) % 30000 + 300 for i in range(n_prompt)]
    ctx.eval(tokens)  # compiles the prompt graph
    times = []
    for _ in range(5):
        ctx.remove(0, 0)
        t0 = time.perf_counter()
        ctx.eval(tokens)
        times.append(time.perf_counter() - t0)
    exe = next(v for k, v in ctx.graphs.items() if k[0] == n_prompt)
    prog = next(p for p in getattr(exe, "programs", [exe]) if hasattr(p, "plan"))
    steps = prog.plan.steps
    items = prog.launches[len(prog.launches) - len(steps) :]  # after the inputs' copies
    per: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    stream, events = prog.stream, []
    with cp.cuda.Device(prog.index), stream:
        for step, item in zip(steps, items, strict=True):
            item(stream.ptr)
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(stream)
            for _ in range(5):
                item(stream.ptr)
            b.record(stream)
            events.append((step, a, b))
        stream.synchronize()
    for step, a, b in events:
        per[_step_key(step)] += cp.cuda.get_elapsed_time(a, b) * 1e3 / 5
        count[_step_key(step)] += 1
    best = min(times)
    total = sum(per.values())
    print(f"pp{n_prompt}: ctx.eval best of 5 {best * 1e3:.2f} ms ({n_prompt / best:.0f} t/s), "
          f"{len(steps)} steps, their sum timed one by one {total / 1e3:.2f} ms")  # fmt: skip
    for key, us in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
        print(f"    {key:40s} {count[key]:4d} x {us / count[key]:8.1f} us = {us / 1e3:7.2f} ms")


def main() -> None:
    path = sys.argv[1]
    n_ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    if os.environ.get("GEMMQ"):
        import llmrt_cuda.executable as executable

        lower = executable.lower
        executable.lower = lambda graph, **_: lower(graph, int8_mma=True)
    model = load(path, device="cuda:0", n_gpu_layers=99)
    if len(sys.argv) > 3:
        return prompt(model, n_ctx, int(sys.argv[3]))
    ctx = model.context(n_ctx=n_ctx)
    ctx.eval([1, 2, 3, 4])
    for _ in range(5):
        ctx.eval([5])
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.eval([7])
    full = (time.perf_counter() - t0) / n
    if os.environ.get("PROFILE_HOST"):  # where the host's share of a step goes
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            ctx.eval([7])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)
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
    # each step's cost inside a graph: a graph of REPEAT launches of that step alone, replayed
    # (so launch gaps and drains count as they do in the decode step's graph)
    steps = prog.plan.steps
    first = len(prog.inputs)
    per: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    nbytes: dict[str, int] = {}
    repeat = 20
    events = []
    with stream:
        for step, item in zip(steps, prog.launches[first : first + len(steps)], strict=True):
            stream.begin_capture()
            for _ in range(repeat):
                prog._launch_one(item)
            graph = stream.end_capture()
            graph.launch(stream)
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(stream)
            for _ in range(5):
                graph.launch(stream)
            b.record(stream)
            stream.synchronize()
            events.append((step, a, b))
        for step, a, b in events:
            key = _step_key(step)
            if step.op in ("mmv", "mmvq"):
                p = step.params
                nbytes[key] = sum(p.get("ms", [p["m"]])) * (2 if "glu" in p else 1) * p["row_bytes"]
            per[key] += cp.cuda.get_elapsed_time(a, b) * 1e3 / (5 * repeat)
            count[key] += 1
    print(f"{path}: {len(steps)} steps, graph={'yes' if prog.graph is not None else 'no'}")
    print(f"  ctx.eval {full * 1e6:.0f} us ({1 / full:.0f} t/s), program.run {run * 1e6:.0f} us, "
          f"graph replay {replay * 1e6:.0f} us")  # fmt: skip
    total = sum(per.values())
    print(f"  sum of the steps, each timed in a graph of {repeat} of itself: {total:.0f} us")
    for key, us in sorted(per.items(), key=lambda kv: -kv[1]):
        rate = f"  {nbytes[key] / (us / count[key]) / 1e3:6.0f} GB/s" if key in nbytes else ""
        print(f"    {key:40s} {count[key]:4d} x {us / count[key]:7.2f} us = {us:8.1f} us{rate}")


if __name__ == "__main__":
    main()
