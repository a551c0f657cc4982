"""Kernel launches with programmatic dependent launch (Hopper and later), through the driver.

A decode step is a chain of a few hundred small kernels; between two of them the GPU drains one
grid and only then starts the next. Launched with the programmatic-stream-serialization
attribute, a kernel's blocks are scheduled while its predecessor still runs and wait in
`griddepcontrol.wait` (every llmrt kernel starts with `pdl_enter()`, common.cuh) until the
predecessor's writes are visible, so the launch latency hides behind the previous kernel's tail.
cupy exposes no launch attributes, so this calls `cuLaunchKernelEx` through ctypes; the launches
are captured into the step's CUDA graph like any other. `LLMRT_CUDA_SAFE=1` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("value", ctypes.c_int32 * 16)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        ("grid", ctypes.c_uint32 * 3),
        ("block", ctypes.c_uint32 * 3),
        ("shared_mem", ctypes.c_uint32),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_Attribute)),
        ("n_attrs", ctypes.c_uint32),
    ]


@functools.cache
def _driver() -> Any:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    lib.cuLaunchKernelEx.argtypes = [
        ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def available(compute_capability: int) -> bool:
    """Programmatic dependent launch needs sm_90+ and a driver that has cuLaunchKernelEx."""
    try:
        return compute_capability >= 90 and hasattr(_driver(), "cuLaunchKernelEx")
    except OSError:
        return False


class DependentLaunch:
    """One kernel launch resolved once (function, grid, arguments) and replayable on a stream."""

    def __init__(self, fn: Any, grid: tuple, block: tuple, args: tuple, smem: int) -> None:
        self.function = fn.kernel.ptr
        self._values = [np.array(a) for a in args]  # each argument's bytes, kept alive here
        self._params = (ctypes.c_void_p * max(1, len(args)))(*[v.ctypes.data for v in self._values])
        self._attr = _Attribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
        self._attr.value[0] = 1
        grid3, block3 = ((ctypes.c_uint32 * 3)(*xs, *(1,) * (3 - len(xs))) for xs in (grid, block))
        self._config = _Config(grid3, block3, smem, None, ctypes.pointer(self._attr), 1)
        self._config_ref = ctypes.byref(self._config)

    def __call__(self, stream_ptr: int) -> None:
        self._config.stream = stream_ptr
        err = _driver().cuLaunchKernelEx(self._config_ref, self.function, self._params, None)
        if err:
            raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {err}")
