"""A compiled graph's kernels recorded once into a command buffer (cl_khr_command_buffer), so that a
step is one enqueue instead of one per kernel: on NVIDIA's OpenCL driver each kernel enqueue costs
about 10 us of host time, which at ~575 kernels a step set the pace of decoding.

pyopencl does not wrap the extension (inducer/pyopencl#820), so its four entry points are called
through ctypes with the raw handles pyopencl exposes (``int_ptr``). `record` returns None where the
device lacks the extension or the driver refuses the recording: the program then enqueues its
kernels one by one, as before.

Where there is no command buffer (NVIDIA's driver 580 has none), `CompiledEnqueue` enqueues the
kernels from one numba loop calling clEnqueueNDRangeKernel: no Python between enqueues, 3.42 us a
kernel instead of pyopencl's 5.69 on an H100 (benchmarks/opencl_launch_cost.py), ~0.6 ms of host
time saved on a 150-275 kernel decode step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

EXTENSION = "cl_khr_command_buffer"
_p, _u32, _i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32
_SIGNATURES = {  # (result, arguments) of the extension's entry points
    "clCreateCommandBufferKHR": (_p, [_u32, _p, _p, ctypes.POINTER(_i32)]),
    # buffer, queue, properties, kernel, work_dim, offset, global, local, n_sync, sync list,
    # sync point out, mutable handle out
    "clCommandNDRangeKernelKHR": (_i32, [_p, _p, _p, _p, _u32, _p, _p, _p, _u32, _p, _p, _p]),
    "clFinalizeCommandBufferKHR": (_i32, [_p]),
    "clEnqueueCommandBufferKHR": (_i32, [_u32, _p, _p, _u32, _p, _p]),
    "clReleaseCommandBufferKHR": (_i32, [_p]),
}


@functools.cache
def _library() -> Any:
    name = ctypes.util.find_library("OpenCL") or "libOpenCL.so.1"
    lib = ctypes.CDLL(name)
    lib.clGetExtensionFunctionAddressForPlatform.restype = _p
    lib.clGetExtensionFunctionAddressForPlatform.argtypes = [_p, ctypes.c_char_p]
    return lib


@functools.cache
def _entry_points(platform: int) -> dict[str, Any] | None:
    lib, found = _library(), {}
    for name, (result, args) in _SIGNATURES.items():
        address = lib.clGetExtensionFunctionAddressForPlatform(platform, name.encode())
        if not address:
            return None
        found[name] = ctypes.CFUNCTYPE(result, *args)(address)
    return found


class CommandBuffer:
    """The recorded kernels of one program, enqueued as one command on its queue."""

    def __init__(self, calls: dict[str, Any], handle: int) -> None:
        self._calls, self._handle = calls, handle
        self._keep: list[Any] = []  # the kernels and size arrays the recording points at

    def enqueue(self) -> None:
        err = self._calls["clEnqueueCommandBufferKHR"](0, None, self._handle, 0, None, None)
        if err:
            raise RuntimeError(f"clEnqueueCommandBufferKHR failed ({err})")

    def __del__(self) -> None:
        calls, self._calls = getattr(self, "_calls", None), None
        if calls:
            calls["clReleaseCommandBufferKHR"](self._handle)


def _sizes(values: Sequence[int] | None) -> Any:
    return None if values is None else (ctypes.c_size_t * len(values))(*values)


def record(device: Any, queue: Any, launches: Sequence[Any]) -> CommandBuffer | None:
    """`launches`' kernels (their arguments already set) recorded in order into a command buffer
    on `queue`, or None where the device cannot."""
    if EXTENSION not in device.extensions.split() or not launches:
        return None
    try:
        calls = _entry_points(device.platform.int_ptr)
    except (OSError, AttributeError):
        return None
    if calls is None:
        return None
    status = _i32(0)
    queues = (_p * 1)(queue.int_ptr)
    handle = calls["clCreateCommandBufferKHR"](1, queues, None, ctypes.byref(status))
    if status.value or not handle:
        return None
    buffer = CommandBuffer(calls, handle)
    previous = None
    for launch in launches:
        sizes = (_sizes(launch.global_size), _sizes(launch.local_size))
        point = ctypes.c_uint32(0)
        # each kernel waits for the one before: the order an in-order queue gives
        wait = None if previous is None else ctypes.byref(previous)
        err = calls["clCommandNDRangeKernelKHR"](
            handle, None, None, launch.kernel.int_ptr, len(launch.global_size), None, *sizes,
            0 if previous is None else 1, wait, ctypes.byref(point), None,
        )  # fmt: skip
        if err:
            return None
        buffer._keep += [launch.kernel, sizes]
        previous = point
    if calls["clFinalizeCommandBufferKHR"](handle):
        return None
    return buffer


# queue, kernel, work_dim, global offset, global size, local size, n_events, wait list, event out
_ENQUEUE_ARGS = [_p, _p, _u32, _p, _p, _p, _u32, _p, _p]
# queue, kernel handles, work_dims, (global, local) sizes padded to 3 dimensions, has a local size;
# returns (the first error, its launch's index) or (0, -1)
_LOOP_SIGNATURE = "UniTuple(int64, 2)(uint64, uint64[::1], uint32[::1], uint64[:, :, ::1], b1[::1])"


@functools.cache
def _enqueue_loop() -> Any:
    """The njit loop over a program's launches, compiled once per process: numba cannot cache a
    function that calls a ctypes function object to disk. The compile took 0.44-0.51 s (a 2-core
    Xeon VM), once, as the first program is built; numba itself is already imported by llmrt."""
    import numba

    enqueue = _library()["clEnqueueNDRangeKernel"]  # its own function object: argtypes are ours
    enqueue.restype, enqueue.argtypes = _i32, _ENQUEUE_ARGS

    @numba.njit(_LOOP_SIGNATURE)  # compiled now, so that a failure shows as a program is built
    def loop(queue: int, kernels: Any, dims: Any, sizes: Any, local: Any) -> tuple[int, int]:
        for i in range(kernels.shape[0]):
            row = sizes[i]  # global then local, 3 dimensions each
            err = enqueue(queue, kernels[i], dims[i], 0, row[0].ctypes.data,
                          row[1].ctypes.data if local[i] else np.uintp(0), 0, 0, 0)  # fmt: skip
            if err != 0:
                return err, i
        return 0, -1

    return loop


class CompiledEnqueue:
    """`launches`' kernels (their arguments already set) enqueued in order on `queue` by one
    compiled call: the host's part of a step without a Python iteration a kernel."""

    def __init__(self, queue: Any, launches: Sequence[Any]) -> None:
        self._loop = _enqueue_loop()
        # the queue and kernels, kept, keep the handles passed to the loop valid
        self._queue, self._launches = queue, list(launches)
        self._queue_ptr = queue.int_ptr
        n = len(self._launches)
        self._kernels = np.array([la.kernel.int_ptr for la in self._launches], np.uint64)
        self._dims = np.array([len(la.global_size) for la in self._launches], np.uint32)
        self._sizes = np.zeros((n, 2, 3), np.uint64)
        self._local = np.array([la.local_size is not None for la in self._launches], np.bool_)
        for i, la in enumerate(self._launches):
            self._sizes[i, 0, : len(la.global_size)] = la.global_size
            if la.local_size is not None:
                self._sizes[i, 1, : len(la.local_size)] = la.local_size

    def enqueue(self) -> None:
        err, i = self._loop(self._queue_ptr, self._kernels, self._dims, self._sizes, self._local)
        if err:
            la = self._launches[i]
            raise RuntimeError(
                f"clEnqueueNDRangeKernel failed ({_status(err)}) on kernel {i} "
                f"{la.kernel.function_name} (global {la.global_size}, local {la.local_size})"
            )


def _status(code: int) -> str:
    import pyopencl as cl

    names = [k for k, v in vars(cl.status_code).items() if v == code and not k.startswith("_")]
    return f"{code}, {names[0]}" if names else str(code)


def compile_enqueue(queue: Any, launches: Sequence[Any]) -> CompiledEnqueue | None:
    """A `CompiledEnqueue` of `launches`, or None where it cannot be built (numba or the ctypes
    entry point missing): the program then enqueues from Python."""
    try:
        return CompiledEnqueue(queue, launches)
    except Exception as exc:  # a faster path only: any failure keeps the Python loop
        if os.environ.get("LLMRT_DEBUG"):
            print(f"llmrt_opencl: no compiled enqueue loop ({type(exc).__name__}: {exc})")
        return None
