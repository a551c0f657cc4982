"""What launching costs on each OpenCL device: N tiny kernels (one work-group each) enqueued one by
one through pyopencl, the same with a flush every 16 (a driver may hold commands until one), one
by one from a compiled loop (llmrt_opencl.replay.CompiledEnqueue, what the backend runs on a GPU
without a command buffer: numba calling clEnqueueNDRangeKernel, no Python between enqueues), then
recorded once into a command buffer (llmrt_opencl.replay) and enqueued as one command. Then what
a kernel's arguments add (buffers, offsets), and where the device has coarse-grained SVM, kernels
that take no buffer at all: every pointer in a block of numbers, itself SVM memory (what llmrt's
kernels could take in place of buffer arguments). Microseconds per kernel, best of R: to the
end of the enqueues (what the host spends) and to the queue's finish.

    python benchmarks/opencl_launch_cost.py [N=575] [R=20]
"""

from __future__ import annotations

import ctypes
import sys
import time
from types import SimpleNamespace

import numpy as np
import pyopencl as cl

from llmrt_opencl import replay

SOURCE = "__kernel void bump(__global float *a) { a[get_global_id(0)] += 1.0f; }"


def best_us(run, finish, n: int, repeats: int) -> str:
    run(), finish()
    enqueued, finished = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        enqueued.append(time.perf_counter() - t)
        finish()
        finished.append(time.perf_counter() - t)
    return (
        f"{min(enqueued) / n * 1e6:.2f} us/kernel enqueued, {min(finished) / n * 1e6:.2f} finished"
    )


def measure(platform: cl.Platform, dev: cl.Device, n: int, repeats: int) -> None:
    ctx = cl.Context([dev])
    queue = cl.CommandQueue(ctx)
    program = cl.Program(ctx, SOURCE).build()
    buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4 * 64)
    cl.enqueue_fill_buffer(queue, buf, np.float32(0), 0, 4 * 64)
    launches = []
    for _ in range(n):
        kernel = cl.Kernel(program, "bump")
        kernel.set_args(buf)
        launches.append(SimpleNamespace(kernel=kernel, global_size=(64,), local_size=(64,)))

    def one_by_one() -> None:
        for la in launches:
            cl.enqueue_nd_range_kernel(queue, la.kernel, la.global_size, la.local_size)

    row = f"{dev.name.strip()} ({platform.name.strip()}, driver {dev.driver_version.strip()})"

    def flushed(every: int = 16) -> None:  # the driver may hold commands until a flush
        for i, la in enumerate(launches):
            cl.enqueue_nd_range_kernel(queue, la.kernel, la.global_size, la.local_size)
            if i % every == every - 1:
                queue.flush()

    print(f"{row}: {n} kernels one by one: {best_us(one_by_one, queue.finish, n, repeats)}")
    print(f"{row}: {n} kernels, a flush every 16: {best_us(flushed, queue.finish, n, repeats)}")
    loop = replay.CompiledEnqueue(queue, launches).enqueue  # what the backend runs
    print(f"{row}: {n} kernels from a compiled loop: {best_us(loop, queue.finish, n, repeats)}")
    recorded = replay.record(dev, queue, launches)
    if recorded is None:
        print(f"{row}: no {replay.EXTENSION}")
        return
    timing = best_us(recorded.enqueue, queue.finish, n, repeats)
    out = np.empty(64, np.float32)
    cl.enqueue_copy(queue, out, buf)
    enqueues = 4 * (repeats + 1)  # every pass of the four ways adds n
    assert out[0] == n * enqueues, (out[0], n * enqueues)  # every kernel ran, once a pass
    print(f"{row}: {n} kernels in a command buffer: {timing}")


def arguments(platform: cl.Platform, dev: cl.Device, n: int, repeats: int) -> None:
    """What a kernel's arguments add to its enqueue (the compiled loop): A buffer arguments, all
    one buffer or A distinct ones, or one buffer and A - 1 offsets (ulong), as llmrt's kernels
    pass an operand as a buffer and a byte offset."""
    ctx = cl.Context([dev])
    queue = cl.CommandQueue(ctx)
    row = f"{dev.name.strip()} ({platform.name.strip()})"
    for a in (1, 8, 16, 32):
        params = ", ".join(f"__global float* a{i}" for i in range(a))
        offsets = ", ".join(["__global float* a0", *(f"ulong o{i}" for i in range(1, a))])
        source = (f"__kernel void bufs({params}) {{ a0[get_global_id(0)] += 1.0f; }}\n"
                  f"__kernel void offs({offsets}) {{ a0[get_global_id(0)] += 1.0f; }}")  # fmt: skip
        program = cl.Program(ctx, source).build()
        bufs = [cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4 * 64) for _ in range(a)]
        offset_args = [bufs[0], *[np.uint64(0)] * (a - 1)]
        for name, args in (("one buffer", [bufs[0]] * a), ("distinct buffers", bufs),
                           ("a buffer and offsets", offset_args)):  # fmt: skip
            launches = []
            for _ in range(n):
                kernel = cl.Kernel(program, "offs" if name.endswith("offsets") else "bufs")
                kernel.set_args(*args)
                launches.append(SimpleNamespace(kernel=kernel, global_size=(64,), local_size=(64,)))
            loop = replay.CompiledEnqueue(queue, launches).enqueue
            print(f"{row}: {a} arguments, {name}: {best_us(loop, queue.finish, n, repeats)}")


CL_KERNEL_EXEC_INFO_SVM_PTRS = 0x11B6


def _svm_pointers(kernel: cl.Kernel, allocations: list) -> None:
    """Tell the driver which SVM allocations `kernel` reaches through pointers it reads from
    memory (clSetKernelExecInfo, which pyopencl does not wrap): set once, as arguments are."""
    lib = replay._library()
    lib.clSetKernelExecInfo.restype = ctypes.c_int32
    lib.clSetKernelExecInfo.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t,
                                        ctypes.c_void_p]  # fmt: skip
    ptrs = (ctypes.c_void_p * len(allocations))(*[a.svm_ptr for a in allocations])
    err = lib.clSetKernelExecInfo(kernel.int_ptr, CL_KERNEL_EXEC_INFO_SVM_PTRS,
                                  ctypes.sizeof(ptrs), ptrs)  # fmt: skip
    if err:
        raise RuntimeError(f"clSetKernelExecInfo failed ({err})")


def svm_pointers(platform: cl.Platform, dev: cl.Device, n: int, repeats: int) -> None:
    """Kernels whose one argument is an SVM block of A pointers (every one an SVM allocation
    named to the driver by clSetKernelExecInfo), the first of which it increments: no buffer
    argument at all. Checked: every enqueue's increment is there at the end."""
    row = f"{dev.name.strip()} ({platform.name.strip()})"
    if not dev.svm_capabilities & cl.device_svm_capabilities.COARSE_GRAIN_BUFFER:
        print(f"{row}: no coarse-grained SVM")
        return
    ctx = cl.Context([dev])
    queue = cl.CommandQueue(ctx)
    source = ("__kernel void svm(__global const ulong* P) {\n"
              "    __global float* a0 = (__global float*)P[0];\n"
              "    a0[get_global_id(0)] += 1.0f;\n}")  # fmt: skip
    program = cl.Program(ctx, source).build()
    flags = cl.svm_mem_flags.READ_WRITE
    for a in (1, 8, 16, 32):
        targets = [cl.SVMAllocation(ctx, 4 * 64, 0, flags) for _ in range(a)]
        block = cl.SVMAllocation(ctx, 8 * a, 0, flags)
        cl.enqueue_copy(queue, block, np.array([t.svm_ptr for t in targets], np.uint64))
        cl.enqueue_svm_memfill(queue, targets[0], np.float32(0))
        launches = []
        for _ in range(n):
            kernel = cl.Kernel(program, "svm")
            kernel.set_arg(0, block)
            _svm_pointers(kernel, targets)
            launches.append(SimpleNamespace(kernel=kernel, global_size=(64,), local_size=(64,)))
        loop = replay.CompiledEnqueue(queue, launches).enqueue
        timing = best_us(loop, queue.finish, n, repeats)
        out = np.empty(64, np.float32)
        cl.enqueue_copy(queue, out, targets[0])
        assert out[0] == n * (repeats + 1), (out[0], n * (repeats + 1))
        print(f"{row}: {a} SVM pointers in an SVM block, no buffer: {timing}")


def main(n: int, repeats: int) -> None:
    for platform in cl.get_platforms():
        for dev in platform.get_devices():
            measure(platform, dev, n, repeats)
            arguments(platform, dev, n, repeats)
            svm_pointers(platform, dev, n, repeats)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 575,
        int(sys.argv[2]) if len(sys.argv) > 2 else 20,
    )
