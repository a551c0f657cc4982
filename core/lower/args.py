"""Kernel arguments in the C types a kernel declares, named by a struct-style format: what CUDA
launches take (cupy and cuLaunchKernelEx read each argument's bytes from a numpy scalar) and
what OpenCL kernels take (pyopencl's ``set_args``).
"""

from __future__ import annotations

import re

import numpy as np

# struct's letters: Q an address (or another uint64), q int64, i int32, f float, d double
C_TYPES = {"Q": np.uint64, "q": np.int64, "i": np.int32, "f": np.float32, "d": np.float64}


def pack(fmt: str, *values: float) -> tuple[np.generic, ...]:
    """``values`` as numpy scalars of ``fmt``'s types, a letter each, a count repeating the
    letter after it ("3Qqi": three uint64, an int64, an int32). Raises ValueError when the
    counts differ."""
    types = [C_TYPES[c] for n, c in re.findall(r"(\d*)(\D)", fmt) for _ in range(int(n or 1))]
    return tuple(t(v) for t, v in zip(types, values, strict=True))
