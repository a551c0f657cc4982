"""The q8 activations the OpenCL kernels write for the integer mat-vecs (norm_rows_q8, quant_q8):
byte for byte what ggml's quantize_row_q8_0 gives (x86: q = rint(x * (127 / amax)), the scale
amax / 127 rounded to f16), with each block's sum of levels. The layer-level conformance cases
cannot see a level or a sum one off (their tolerance is a whole layer's); these can."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.lower.passes import q8_layout


def q8_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels int8 [n], scales f32 [n / 32] (f16 values), level sums int32 [n / 32])."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    levels = np.rint(blocks * inv[:, None]).astype(np.int32)
    scales = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return levels.astype(np.int8).reshape(-1), scales, levels.sum(axis=1, dtype=np.int32)


def read_q8(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dso, _ = q8_layout(n)
    pairs = raw[dso : dso + (n // 32) * 8].view(np.float32).reshape(-1, 2)
    return raw[:n].view(np.int8), pairs[:, 0].copy(), pairs[:, 1].copy().view(np.int32)


def values(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    x[:32] = 0.0  # a block of zeros: scale 0, levels 0
    x[32:64] *= 1e-3
    x[64] = -abs(x[64:96]).max() * 2  # the largest magnitude negative: level -127
    return x


def run(opencl, name: str, args: tuple, global_size: int, local_size: int, parts: int = 1) -> None:
    import pyopencl as cl

    kernel = cl.Kernel(opencl.program("ops.cl", ()), name)
    kernel.set_args(*args)
    cl.enqueue_nd_range_kernel(opencl.queue, kernel, (global_size, parts), (local_size, 1))
    opencl.queue.finish()


def buffers(opencl, x: np.ndarray):  # noqa: ANN201
    import pyopencl as cl

    mf = cl.mem_flags
    xb = cl.Buffer(opencl.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
    qb = cl.Buffer(opencl.context, mf.READ_WRITE, q8_layout(x.size)[1])
    return xb, qb


@pytest.mark.parametrize("local", [8, 64, 256])
@pytest.mark.parametrize("n", [96, 2048, 8192 + 64])
def test_quant_q8_writes_ggml_q8_0_blocks(opencl, n, local):
    import pyopencl as cl

    x = values(n, n)
    xb, qb = buffers(opencl, x)
    dso = q8_layout(n)[0]
    items = -(-n // (4 * local)) * local
    run(opencl, "quant_q8", (xb, np.uint64(0), qb, np.uint64(0), np.int64(dso),
                             np.int64(n // 32)), items, local)  # fmt: skip
    raw = np.empty(q8_layout(n)[1], np.uint8)
    cl.enqueue_copy(opencl.queue, raw, qb)
    for got, want in zip(read_q8(raw, n), q8_blocks(x), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", [0, 1])  # rms_norm, norm
@pytest.mark.parametrize(("ncols", "rows", "local", "parts"), [
    (576, 2, 256, 1), (64, 3, 32, 1), (2048, 1, 256, 1), (2048, 1, 256, 2), (4096, 2, 64, 8),
    (576, 1, 32, 3),
])  # fmt: skip
def test_norm_rows_q8_writes_its_rows_as_ggml_q8_0_blocks(opencl, ncols, rows, local, parts, mode):
    """One work-group a row, or `parts` sharing each (a decode step's on a GPU)."""
    import pyopencl as cl

    n = ncols * rows
    x = values(n, ncols) + 0.5
    w = np.random.default_rng(1).uniform(0.5, 1.5, ncols).astype(np.float32)
    xb, qb = buffers(opencl, x)
    yb = cl.Buffer(opencl.context, cl.mem_flags.READ_WRITE, 4 * n)
    wb = cl.Buffer(opencl.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=w)
    args = (xb, np.uint64(0), yb, np.uint64(0), wb, np.uint64(0), np.int32(ncols),
            np.float32(1e-5), np.int32(mode), np.int32(1), np.int32(1), qb, np.uint64(0),
            np.int64(q8_layout(n)[0]))  # fmt: skip
    run(opencl, "norm_rows_q8", args, rows * local, local, parts)
    y, raw = np.empty(n, np.float32), np.empty(q8_layout(n)[1], np.uint8)
    cl.enqueue_copy(opencl.queue, y, yb)
    cl.enqueue_copy(opencl.queue, raw, qb)
    rows_x = x.reshape(rows, ncols).astype(np.float64)
    if mode == 1:
        rows_x -= rows_x.mean(axis=1, keepdims=True)
    want_y = rows_x / np.sqrt((rows_x**2).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y.reshape(rows, ncols), want_y, rtol=1e-5, atol=1e-6)
    for got, want in zip(read_q8(raw, n), q8_blocks(y), strict=True):
        np.testing.assert_array_equal(got, want)
