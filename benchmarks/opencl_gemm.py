"""The OpenCL prompt products alone: weights.cl's float gemm (dequantized weights, activations
rounded inside each tile) against gemmq (activations as q8 blocks, integer dot products), each
kernel's time from OpenCL profiling events, as GFLOP/s (2 M K T / time; GOPS for gemmq). gemmq's
input quantization (ops.cl's quant_q8, once per activation matrix, shared by q/k/v or gate/up) is
timed apart and in the "+quant" column.

    python benchmarks/opencl_gemm.py [--device 0] [--t 512] [--types q4_0,q4_1,q5_0,q5_1,q8_0]
        [--shapes 2048x2048,8192x2048,4096x4096,14336x4096] [--reps 10]
        [--tile RX,RY,TM,TN,NB[,MMA] ...]

The default shapes are the weights of the 1B and 8B rows of DESIGN.md (M x K); --tile times
gemmq in other tiles too (the launch's own choice is always timed, marked "*"; MMA 1: on NVIDIA's
tensor cores), each tile's output compared with the first's. The kernels are
built as a GPU runs them on any device (PoCL too: a sanity run there, e.g. --t 64 --reps 2).
The weights are a few hundred quantized rows of uniform values repeated down the matrix.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyopencl as cl

from llmrt.device import registry
from llmrt.gguf.constants import GGMLType
from llmrt.gguf.quants import quantize
from llmrt.lower.passes import q8_layout
from llmrt_opencl import launch_weights as lw

DISTINCT_ROWS = 256


class KernelSource:
    """What launch_weights' kernel helpers read of an OpenCLProgram: the device's limits, and
    kernels of its programs."""

    def __init__(self, device) -> None:  # noqa: ANN001
        self.device = device
        self.device_info = dict(device.limits, cpu=0)  # the GPU kernels, on any device

    def kernel(self, file: str, name: str, defines: dict | None = None) -> cl.Kernel:
        return cl.Kernel(self.device.program(file, tuple(sorted((defines or {}).items()))), name)


def profiling_device(index: int) -> tuple[object, KernelSource, cl.CommandQueue]:
    """OpenCL device `index`, its kernels as a GPU builds them, and a profiling queue on it."""
    device = registry().entry("opencl").devices[index]
    props = cl.command_queue_properties.PROFILING_ENABLE
    return device, KernelSource(device), cl.CommandQueue(device.context, properties=props)


def _time(queue: cl.CommandQueue, kernel: cl.Kernel, gsize: tuple, lsize: tuple,
          reps: int) -> float:  # fmt: skip
    """Median seconds of one launch (one warm-up first)."""
    cl.enqueue_nd_range_kernel(queue, kernel, gsize, lsize).wait()
    times = []
    for _ in range(reps):
        ev = cl.enqueue_nd_range_kernel(queue, kernel, gsize, lsize)
        ev.wait()
        times.append((ev.profile.end - ev.profile.start) * 1e-9)
    return float(np.median(times))


def _weights(wtype: GGMLType, m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    rows = quantize(rng.uniform(-1, 1, (min(m, DISTINCT_ROWS), k)).astype(np.float32), wtype)
    return np.ascontiguousarray(np.resize(rows, (m, rows.shape[1])))


def _q8(t: int, k: int, rng: np.random.Generator) -> np.ndarray:
    dso, nbytes = q8_layout(t * k)
    q8 = np.zeros(nbytes, np.uint8)
    q8[: t * k] = rng.integers(-127, 128, t * k, dtype=np.int8).view(np.uint8)
    pairs = np.zeros((t * k // 32, 2), np.float32)
    pairs[:, 0] = 0.01
    q8[dso:] = pairs.reshape(-1).view(np.uint8)
    return q8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0, help="index among the OpenCL devices")
    ap.add_argument("--t", type=int, default=512, help="tokens (prompt length)")
    ap.add_argument("--types", default="q4_0,q4_1,q5_0,q5_1,q8_0")
    ap.add_argument("--shapes", default="2048x2048,8192x2048,4096x4096,14336x4096")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tile", action="append", default=[], help="RX,RY,TM,TN,NB")
    args = ap.parse_args()
    device, src, queue = profiling_device(args.device)
    ctx, mf = device.context, cl.mem_flags
    info = device.info()
    print(f"# {info.name} ({info.summary}); T={args.t}; limits "
          f"{ {k: v for k, v in src.device_info.items() if k != 'max_alloc'} }")  # fmt: skip
    print(f"{'type':6} {'M x K':>11} {'kernel':26} {'ms':>9} {'GFLOP/s':>9} {'+quant':>9}")
    rng = np.random.default_rng(0)
    t = args.t
    extra = [tuple(int(v) for v in s.split(",")) for s in args.tile]
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.split("x"))
        x = rng.uniform(-1, 1, (t, k)).astype(np.float32)
        xb = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
        dso, nbytes = q8_layout(t * k)
        qb = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=_q8(t, k, rng))
        yb = cl.Buffer(ctx, mf.READ_WRITE, 4 * t * m)
        z = np.uint64(0)
        # quant_q8 of the activations (launch_ops.quant_q8_launch's sizes on a GPU)
        local = max(8, min(256, device.limits["max_work_group_size"]) // 8 * 8)
        quant = src.kernel("ops.cl", "quant_q8")
        quant.set_args(xb, z, qb, z, np.int64(dso), np.int64(t * k // 32))
        tq = _time(queue, quant, (-(-t * k // (4 * local)) * local,), (local,), args.reps)
        flops = 2.0 * m * k * t
        for name in args.types.split(","):
            wtype = GGMLType[name.upper()]
            raw = _weights(wtype, m, k, rng)
            wb = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=raw)
            rb = np.int64(raw.shape[1])
            gemm = src.kernel("weights.cl", "gemm", {"WTYPE": int(wtype)})
            gemm.set_args(wb, z, rb, xb, z, yb, z, yb, z, np.int32(0), np.int32(m), np.int32(k),
                          np.int32(t))  # fmt: skip
            size = (lw._groups(m, lw.GEMM_M) * lw.GEMM_WG, lw._groups(t, lw.GEMM_T))
            tg = _time(queue, gemm, size, (lw.GEMM_WG, 1), args.reps)
            print(f"{name:6} {shape:>11} {'gemm (float)':26} {tg * 1e3:9.3f} "
                  f"{flops / tg / 1e9:9.1f}")  # fmt: skip
            tiles = lw.gemmq_tiles(src.device_info, wtype, m, t)
            chosen = tiles[0] if tiles else None
            first = None  # the first tile's output: every other's is compared with it
            for tile in [chosen, *[e for e in extra if e != chosen]]:
                if tile is None:
                    continue
                rx, ry, tm, tn, nb, *mma = tile
                on = {"GQ_MMA": mma[0]} if mma else {}
                kern = lw.q8_kernel(src, wtype, "gemmq", GQ_RX=rx, GQ_RY=ry, GQ_TM=tm,
                                     GQ_TN=tn, GQ_NB=nb, **on)  # fmt: skip
                kern.set_args(wb, z, rb, qb, z, np.int64(dso), yb, z, yb, z, np.int32(0),
                              np.int32(m), np.int32(k), np.int32(t))  # fmt: skip
                size = (lw._groups(m, rx * tm) * rx * ry, lw._groups(t, ry * tn))
                tk = _time(queue, kern, size, (rx * ry, 1), args.reps)
                y = np.empty((t, m), np.float32)
                cl.enqueue_copy(queue, y, yb)
                if first is None:
                    first, same = y, ""
                else:
                    diff = float(np.abs(y - first).max())
                    same = "  same as the first" if diff == 0 else f"  max |diff| {diff:.3g}"
                label = f"gemmq {','.join(map(str, tile))}" + (" *" if tile == chosen else "")
                print(f"{name:6} {shape:>11} {label:26} {tk * 1e3:9.3f} "
                      f"{flops / tk / 1e9:9.1f} {flops / (tk + tq) / 1e9:9.1f}{same}")  # fmt: skip
        print(f"{'':6} {shape:>11} {'quant_q8 (T x K)':26} {tq * 1e3:9.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
