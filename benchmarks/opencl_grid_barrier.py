"""What a barrier across a whole launch costs on each OpenCL device, against a launch of its own:
the question behind a persistent decode kernel (one launch a step, its phases parted by barriers
over every work-group) on a driver whose launches cost ~9 us each (NVIDIA's: 575 tiny kernels
take 8.92 us each to finish, benchmarks/opencl_launch_cost.py).

One kernel runs P phases. In each, every work-item reads a value its neighbouring work-group
wrote in the phase before (through volatile loads: no stale cache line) and writes it plus one;
then every work-group waits at the barrier: one work-item a group counts itself in with an
atomic increment and spins on volatile loads of the counter until all G groups of that phase
have. G is a multiple of the compute units small enough that every group is resident at once
(OpenCL promises no forward progress to a group that is not, so a persistent kernel must launch
no more than fit). Each
element must end at P: a check that the barrier orders the phases. Microseconds per phase, best
of R, from the slope between P = 1 and P = N.

    python benchmarks/opencl_grid_barrier.py [N=1000] [R=10] [GROUPS_PER_CU=1,2,4,8] [WG=64,256]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyopencl as cl

SOURCE = r"""
__kernel void phases(__global volatile float* data, __global volatile int* count, int n_phases) {
    const int g = get_group_id(0), n_groups = get_num_groups(0), l = get_local_id(0);
    const int wg = get_local_size(0), n = n_groups * wg;
    const int from = ((g + 1) % n_groups) * wg + l;  // the neighbouring group's element
    for (int p = 0; p < n_phases; ++p) {
        __global volatile float* src = data + (p & 1) * n;
        __global volatile float* dst = data + ((p + 1) & 1) * n;
        dst[g * wg + l] = src[from] + 1.0f;
        mem_fence(CLK_GLOBAL_MEM_FENCE);  // this group's writes before its count
        barrier(CLK_GLOBAL_MEM_FENCE);
        if (l == 0) {
            atomic_inc(count);
            while (*count < (p + 1) * n_groups) {  // a volatile load: no atomic traffic
            }
        }
        barrier(CLK_GLOBAL_MEM_FENCE);
    }
}
"""


def measure(dev: cl.Device, n_phases: int, repeats: int, per_cu: int, wg: int) -> str:
    ctx = cl.Context([dev])
    queue = cl.CommandQueue(ctx)
    kernel = cl.Program(ctx, SOURCE).build().phases
    groups = dev.max_compute_units * per_cu
    n = groups * wg
    data = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 2 * n * 4)
    count = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4)

    def run(phases: int) -> float:
        cl.enqueue_fill_buffer(queue, data, np.float32(0), 0, 2 * n * 4)
        cl.enqueue_fill_buffer(queue, count, np.int32(0), 0, 4)
        queue.finish()
        t = time.perf_counter()
        kernel(queue, (n,), (wg,), data, count, np.int32(phases))
        queue.finish()
        elapsed = time.perf_counter() - t
        out = np.empty(n, np.float32)
        cl.enqueue_copy(queue, out, data, src_offset=(phases & 1) * n * 4)
        assert np.all(out == phases), f"phases unordered: {np.unique(out)[:8]} (want {phases})"
        return elapsed

    run(1)
    one = min(run(1) for _ in range(repeats))
    many = min(run(n_phases) for _ in range(repeats))
    per = (many - one) / (n_phases - 1) * 1e6
    return f"{groups} groups of {wg} ({per_cu} a compute unit): {per:.2f} us a phase"


def main(n_phases: int, repeats: int, per_cu: list[int], sizes: list[int]) -> None:
    for platform in cl.get_platforms():
        for dev in platform.get_devices():
            driver = f"{platform.name.strip()}, driver {dev.driver_version.strip()}"
            row = f"{dev.name.strip()} ({driver})"
            for wg in sizes:
                for k in per_cu:
                    print(f"{row}: {measure(dev, n_phases, repeats, k, wg)}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:] + [""] * 4
    main(
        int(args[0] or 1000),
        int(args[1] or 10),
        [int(x) for x in (args[2] or "1,2,4,8").split(",")],
        [int(x) for x in (args[3] or "64,256").split(",")],
    )
