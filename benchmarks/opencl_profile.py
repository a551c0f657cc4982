"""Where an OpenCL decode step's time goes: the kernels enqueued one by one on a profiling queue,
each kernel's execution time from its event, beside the step's wall time. Prints per step: wall
ms, GPU busy ms (the kernels' summed execution), the span from the first kernel's start to the
last one's end, and the gaps (span - busy: what the device waited between kernels), then the
kernels by total time.

    LLMRT_OPENCL_SAFE=1 python benchmarks/opencl_profile.py MODEL [DEVICE=opencl:0] [STEPS=16]
        [PROMPT=30] [module.NAME=VALUE ...]

PROFILE_PROMPT=1 profiles the prompt instead: STEPS evaluations of it, each in an emptied context.
BY_SIZE=1 lists each kernel per global size (a mat-vec's shapes apart).

LLMRT_OPENCL_SAFE=1 is needed where the device records command buffers (one event for the step).
The decode steps follow a prompt of PROMPT tokens in a context of PROMPT + STEPS + 8 cells (as
`llmrt bench -p PROMPT -n STEPS` has). module.NAME=VALUE sets a constant of an llmrt_opencl module
before the model loads (e.g. launch_attention.MAX_SPLITS=4), to compare launch choices.
"""

from __future__ import annotations

import collections
import functools
import importlib
import os
import sys
import time

import pyopencl as cl

from llmrt import engine
from llmrt_opencl import backend

EVENTS: list[tuple[str, cl.Event]] = []
RECORDING = [False]
BY_SIZE = bool(os.environ.get("BY_SIZE"))
_enqueue = cl.enqueue_nd_range_kernel


def recording_enqueue(queue, kernel, global_size, local_size, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    event = _enqueue(queue, kernel, global_size, local_size, *args, **kwargs)
    if RECORDING[0]:
        name = kernel.function_name
        EVENTS.append((f"{name} {global_size[0]}" if BY_SIZE else name, event))
    return event


def profiling_queue(self):  # noqa: ANN001, ANN201
    return cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)


def main(path: str, device: str, steps: int, prompt: int, overrides: list[str]) -> None:
    for item in overrides:
        name, value = item.split("=", 1)
        module, constant = name.rsplit(".", 1)
        setattr(importlib.import_module(f"llmrt_opencl.{module}"), constant, int(value))
    cl.enqueue_nd_range_kernel = recording_enqueue
    backend.OpenCLDevice.queue = functools.cached_property(profiling_queue)
    backend.OpenCLDevice.queue.__set_name__(backend.OpenCLDevice, "queue")
    model = engine.load(path, device=device)
    ctx = model.context(n_ctx=prompt + steps + 8)
    ctx.eval([10 + i % 200 for i in range(prompt)])
    for i in range(2):
        ctx.eval([100 + i])
    totals: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    rows = []
    whole_prompt = bool(os.environ.get("PROFILE_PROMPT"))
    for i in range(steps):
        EVENTS.clear()
        if whole_prompt:
            ctx.remove()
        RECORDING[0] = True
        start = time.perf_counter()
        ctx.eval([10 + j % 200 for j in range(prompt)] if whole_prompt else [200 + i])
        wall = time.perf_counter() - start
        RECORDING[0] = False
        times = [(name, e.profile.start, e.profile.end) for name, e in EVENTS]
        busy = sum(end - begin for _, begin, end in times) / 1e6
        span = (max(t[2] for t in times) - min(t[1] for t in times)) / 1e6
        rows.append((wall * 1e3, busy, span, len(times)))
        for name, begin, end in times:
            totals[name] += (end - begin) / 1e6
            counts[name] += 1
    for wall, busy, span, n in rows:
        print(
            f"step: wall {wall:.3f} ms, {n} kernels, busy {busy:.3f} ms, span {span:.3f} ms, "
            f"gaps {span - busy:.3f} ms ({(span - busy) / max(n - 1, 1) * 1e3:.2f} us a kernel)"
        )
    print("kernels by time (ms a step, launches a step):")
    for name, ms in totals.most_common(25 if BY_SIZE else 15):
        print(f"  {name:28s} {ms / steps:8.3f}  {counts[name] // steps}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if "=" not in a]
    main(args[0], args[1] if len(args) > 1 else "opencl:0", int(args[2]) if len(args) > 2 else 16,
         int(args[3]) if len(args) > 3 else 30, [a for a in sys.argv[1:] if "=" in a])  # fmt: skip
