"""One-token attention on OpenCL alone: attention.cl's fattn as a decode step launches it, one
split, over caches of S keys, timed by OpenCL profiling events (median of REPS), beside an empty
kernel's event time (what a launch costs before any work). The slope over S is the cost of a tile
of keys; the intercept less the empty kernel's, the work outside the tile loop. Variants: with
and without the mask, the q rows of one or of all a KV head's query heads (NR). --kernel
fattn_vec times that kernel instead (a stream of work-items a key; --nt its work-group size, a
"tile" then nt keys).

    python benchmarks/opencl_attn_probe.py [--device 0] [--hq 9] [--hkv 3] [--d 64]
        [--s 32,64,128,256,512] [--reps 20] [--nt 32] [--kernel fattn] [--define NAME=VALUE ...]

The default heads are the 135M row's (9 query heads over 3 KV heads of 64); f16 caches.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyopencl as cl
from opencl_gemm import _time, profiling_device

EMPTY = "__kernel void empty(__global int* x) { if (get_global_id(0) == 1u << 30) x[0] = 0; }"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0, help="index among the OpenCL devices")
    ap.add_argument("--hq", type=int, default=9)
    ap.add_argument("--hkv", type=int, default=3)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--s", default="32,64,128,256,512", help="keys in the cache")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--nt", type=int, default=32, help="work-items a group, keys a tile")
    ap.add_argument("--kernel", default="fattn", choices=["fattn", "fattn_vec"])
    ap.add_argument("--define", action="append", default=[], help="NAME=VALUE, another -D (VU)")
    args = ap.parse_args()
    device, src, queue = profiling_device(args.device)
    ctx, mf = device.context, cl.mem_flags
    hq, hkv, d, nt = args.hq, args.hkv, args.d, args.nt
    group = hq // hkv
    sizes = [int(v) for v in args.s.split(",")]
    rng = np.random.default_rng(0)
    q = rng.uniform(-1, 1, (1, hq, d)).astype(np.float32)
    cache = rng.uniform(-1, 1, (max(sizes), hkv, d)).astype(np.float16)
    mask = np.zeros((1, max(sizes)), np.float32)
    arrays = {"q": q, "k": cache, "v": cache.copy(), "mask": mask}
    flags = mf.READ_WRITE | mf.COPY_HOST_PTR
    bufs = {name: cl.Buffer(ctx, flags, hostbuf=a) for name, a in arrays.items()}
    out = cl.Buffer(ctx, mf.READ_WRITE, 4 * hq * d)
    z = np.uint64(0)
    empty = cl.Kernel(cl.Program(ctx, EMPTY).build(), "empty")
    empty.set_args(out)
    t_empty = _time(queue, empty, (nt,), (nt,), args.reps)
    print(f"# {device.info().name}; empty kernel {t_empty * 1e6:.1f} us (event start to end)")
    print(f"{'NR':>3} {'mask':>4} " + " ".join(f"{'S=' + str(s):>9}" for s in sizes)
          + "   us a tile of keys (slope)")  # fmt: skip
    extra = {k: int(v) for k, v in (x.split("=") for x in args.define)}
    for nr in (1, group):
        defines = {"NT": nt, "D": d, "DV": d, "NR": nr, "KF16": 1, "VF16": 1, "NEWROW": 0,
                   "XQ8": 0, **extra}  # fmt: skip
        if args.kernel == "fattn_vec":  # as launch_attention._vec picks them
            lpk = 32
            while (d // 4) % lpk:
                lpk //= 2
            defines.update({"VT": nt, "LPK": min(lpk, nt), **extra})
        kernel = src.kernel("attention.cl", args.kernel, defines)
        for has_mask in (0, 1):
            times = []
            for s in sizes:
                stand_in = (bufs["q"], z)
                kernel.set_args(
                    bufs["q"], z, bufs["k"], z, bufs["v"], z, bufs["mask"], z, out, z, out, z,
                    np.int32(1), np.int32(hq), np.int32(hkv), np.int32(s),
                    np.int64(hkv * d), np.int64(d), np.int64(hkv * d), np.int64(d),
                    np.float32(1 / math.sqrt(d)), np.float32(0),
                    np.int32(has_mask), np.int32(s), *stand_in * 7, np.int32(0), np.int32(0),
                    np.int32(0), *[np.float32(0)] * 5, out, z, np.int64(0),
                )  # fmt: skip
                blocks = -(-group // nr)
                times.append(_time(queue, kernel, (blocks * nt, hkv, 1), (nt, 1, 1), args.reps))
            slope = np.polyfit([s / nt for s in sizes], times, 1)[0] if len(sizes) > 1 else 0.0
            print(f"{nr:>3} {has_mask:>4} " + " ".join(f"{t * 1e6:9.1f}" for t in times)
                  + f"   {slope * 1e6:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
