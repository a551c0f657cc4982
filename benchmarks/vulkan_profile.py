"""Where a Vulkan decode step's time goes: the engine around it, each segment of the program (the
host's token lookup, the device's), inside the device program the input copy, the submission
and wait, and the read-back; then GPU time per shader from timestamps between dispatches
(TimedProgram, which the device compiles in place of VulkanProgram here).

    python benchmarks/vulkan_profile.py MODEL.gguf [n_steps] [device] [n_prompt]

With n_prompt, a prompt of that many tokens instead: its GPU time per shader.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

import llmrt_vulkan.program
from llmrt.engine import load
from llmrt_vulkan.program import COMPUTE, VulkanProgram


class TimedProgram(VulkanProgram):
    """A program whose command buffer writes a GPU timestamp before the first dispatch and
    after each one."""

    def _record_dispatches(self, cb: Any, pipelines: list[Any], sets: list[Any], barrier) -> None:
        vk, n_q = self.rt.vk, len(self.dispatches) + 1
        info = vk.VkQueryPoolCreateInfo(queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=n_q)
        self.query_pool = vk.vkCreateQueryPool(self.rt.device, info, None)
        vk.vkCmdResetQueryPool(cb, self.query_pool, 0, n_q)
        vk.vkCmdWriteTimestamp(cb, COMPUTE, self.query_pool, 0)
        super()._record_dispatches(cb, pipelines, sets, barrier)

    def _record_dispatch(self, cb: Any, i: int, pipe: Any, dset: Any) -> None:
        super()._record_dispatch(cb, i, pipe, dset)
        self.rt.vk.vkCmdWriteTimestamp(cb, COMPUTE, self.query_pool, i + 1)

    def dispatch_times(self) -> list[tuple[str, float]]:
        """(shader, seconds) of each dispatch of the last run."""
        vk = self.rt.vk
        n_q = len(self.dispatches) + 1
        data = vk.ffi.new("uint64_t[]", n_q)
        wait_64bit = 0x1 | 0x2
        vk.vkGetQueryPoolResults(self.rt.device, self.query_pool, 0, n_q, 8 * n_q,
                                 vk.ffi.cast("void *", data), 8, wait_64bit)  # fmt: skip
        limits = vk.vkGetPhysicalDeviceProperties(self.rt.physical).limits
        period = limits.timestampPeriod * 1e-9
        return [(f"{d.shader}{list(d.spec) if d.spec else ''}", (data[i + 1] - data[i]) * period)
                for i, d in enumerate(self.dispatches)]  # fmt: skip


# the device compiles its programs from here on as TimedProgram (VulkanDevice.compile imports
# VulkanProgram from llmrt_vulkan.program when it is called)
llmrt_vulkan.program.VulkanProgram = TimedProgram


def print_shader_times(prog: TimedProgram) -> None:
    per: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for name, sec in prog.dispatch_times():
        per[name] += sec
        count[name] += 1
    total = sum(per.values())
    print(f"GPU time between first and last timestamp: {total * 1e3:.3f} ms")
    for name in sorted(per, key=per.get, reverse=True):
        print(f"  {name:28s} x{count[name]:4d} {per[name] * 1e3:9.3f} ms {per[name] / total:6.1%}")


def profile_prompt(model: Any, n_prompt: int, n: int) -> None:
    """The last of n prompts' GPU time per shader (the timestamps of a program's last run)."""
    ctx = model.context(n_ctx=n_prompt + 16)
    tokens = [(i * 7919) % 30000 + 300 for i in range(n_prompt)]
    best = float("inf")
    for _ in range(n + 1):
        ctx.clear()
        t0 = time.perf_counter()
        ctx.eval(tokens)
        best = min(best, time.perf_counter() - t0)
    print(f"pp{n_prompt}: best {best * 1e3:.2f} ms ({n_prompt / best:.0f} t/s)")
    exe = next(v for k, v in ctx.graphs.items() if k[0] == n_prompt)
    for prog in getattr(exe, "programs", [exe]):
        if isinstance(prog, TimedProgram):
            print_shader_times(prog)


def main() -> None:
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    device = sys.argv[3] if len(sys.argv) > 3 else "vulkan:0"
    t0 = time.perf_counter()
    model = load(path, device=device, n_gpu_layers=99)
    print(f"load {time.perf_counter() - t0:.2f} s")
    if len(sys.argv) > 4:
        profile_prompt(model, int(sys.argv[4]), n)
        return
    ctx = model.context(n_ctx=256)
    t0 = time.perf_counter()
    ctx.eval([1, 2, 3, 4])
    ctx.eval([5])
    print(f"first prompt + first decode (compiles) {time.perf_counter() - t0:.2f} s")
    for _ in range(2):
        ctx.eval([5])
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.eval([7])
    full = (time.perf_counter() - t0) / n
    print(f"ctx.eval([tok]): {full * 1e3:.3f} ms/step  ({1 / full:.1f} t/s)")

    exe = next(v for k, v in ctx.graphs.items() if k[0] == 1)
    progs = getattr(exe, "programs", [exe])
    # feed each segment what it saw: run the whole thing once, keeping every value
    inputs = {
        "tokens": np.array([7], np.int32), "pos": np.array([10], np.int32),
        "kv_cells": np.array([10], np.int32), "out_rows": np.array([0], np.int32),
        **ctx._masks(np.array([10]), np.array([0]), 256),
    }  # fmt: skip
    values = dict(inputs)
    for p in progs:
        values.update(p.run(values))
    for i, p in enumerate(progs):
        t0 = time.perf_counter()
        for _ in range(n):
            p.run(values)
        dt = (time.perf_counter() - t0) / n
        print(f"segment {i} {type(p).__name__}: {dt * 1e3:.3f} ms/run")
    vk_prog = next((p for p in progs if hasattr(p, "dispatches")), None)
    if vk_prog is None:
        return
    rt = vk_prog.rt
    print(
        f"dispatches {len(vk_prog.dispatches)}, barriers {vk_prog.n_barriers}, "
        f"arena {vk_prog.arena_peak / 2**20:.2f} MiB, inputs {vk_prog.inputs_size} B, "
        f"unified {rt.unified}, cpu kernels {rt.cpu}"
    )
    t_sub = t_in = t_out = 0.0
    for _ in range(n):
        a = time.perf_counter()
        for key, view, np_type in vk_prog._in_views:
            view[:] = np.ascontiguousarray(values[key], dtype=np_type).reshape(-1).view(np.uint8)
        b = time.perf_counter()
        rt.run(vk_prog.submit)
        c = time.perf_counter()
        vk_prog._read_outputs()
        d = time.perf_counter()
        t_in, t_sub, t_out = t_in + b - a, t_sub + c - b, t_out + d - c
    print(
        f"inputs {t_in / n * 1e3:.3f} ms, submit+wait {t_sub / n * 1e3:.3f} ms, "
        f"read-back {t_out / n * 1e3:.3f} ms"
    )
    if not isinstance(vk_prog, TimedProgram) or not vk_prog.dispatches:
        return
    print_shader_times(vk_prog)
    # a run of consecutive dispatches from the middle (one layer or so), each with its time
    # since the previous timestamp; integer mat-vecs with rows x k, prologue and epilogue modes
    times = vk_prog.dispatch_times()
    mid = len(times) // 2
    print("dispatches from the middle (us):")
    window = zip(vk_prog.dispatches[mid : mid + 14], times[mid : mid + 14], strict=True)
    for d, (name, sec) in window:
        extra = ""
        if d.shader.startswith("matvec_q8"):
            extra = f" {d.push[2]}x{d.push[0]}"
            if d.shader.startswith("matvec_q8p"):
                extra += f" prologue {d.push[9] & 7} epilogue {d.push[16]}"
        print(f"  {name:28s} {sec * 1e6:8.1f}  groups {d.groups[0] * d.groups[1]}{extra}")


if __name__ == "__main__":
    main()
