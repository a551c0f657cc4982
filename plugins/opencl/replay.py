"""A compiled graph's kernels recorded once into a command buffer (cl_khr_command_buffer), so that a
step is one enqueue instead of one per kernel: on NVIDIA's OpenCL driver each kernel enqueue costs
about 10 us of host time, which at ~575 kernels a step set the pace of decoding.

pyopencl does not wrap the extension (inducer/pyopencl#820), so its four entry points are called
through ctypes with the raw handles pyopencl exposes (``int_ptr``). `record` returns None where the
device lacks the extension or the driver refuses the recording: the program then enqueues its
kernels one by one, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from typing import Any

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
