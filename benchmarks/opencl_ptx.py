"""What NVIDIA's OpenCL compiler makes of a decode step's kernels: each program's binary (PTX text
on NVIDIA's driver) written to OUT_DIR, and per kernel its instruction count, its local-memory
(stack) loads and stores (registers spilled, or private arrays the compiler did not keep in
registers), its shared-memory and global loads, and its barriers.

    python benchmarks/opencl_ptx.py OUT_DIR [--device 0]

The programs: attention.cl as the 135M row's decode step builds it (NT 32, heads of 64, three rows
a group, f16 caches, the new row and q8 output fused) and as opencl_attn_probe.py does (neither
fused); weights.cl for Q4_0 with NVIDIA's dp4a where the driver takes it (mmvq_<NT>_<R>, gemmq).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pyopencl as cl
from opencl_gemm import profiling_device

ATTENTION = {"NT": 32, "D": 64, "DV": 64, "NR": 3, "KF16": 1, "VF16": 1}
PROGRAMS = {
    "fattn-decode": ("attention.cl", {**ATTENTION, "NEWROW": 1, "XQ8": 1}),
    "fattn-probe": ("attention.cl", {**ATTENTION, "NEWROW": 0, "XQ8": 0}),
    "weights-q4_0": ("weights.cl", {"WTYPE": 2, "NV_DP4A": 1}),
}
COUNTS = {
    "instructions": r"^\s+[a-z][\w.]*\s.*;$",
    "ld.local": r"\bld\.local\b",
    "st.local": r"\bst\.local\b",
    "ld.shared": r"\bld\.shared\b",
    "ld.global": r"\bld\.global\b",
    "bar.sync": r"\bbar\.sync\b",
}


def kernels_of(ptx: str) -> dict[str, str]:
    """Each .entry's text, by name: from its name to the next entry's."""
    entries = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+(\w+)\s*\(", ptx)]
    ends = [start for start, _ in entries[1:]] + [len(ptx)]
    return {name: ptx[start:end] for (start, name), end in zip(entries, ends, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--device", type=int, default=0, help="index among the OpenCL devices")
    args = ap.parse_args()
    device, _, _ = profiling_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {device.info().name}")
    print(f"{'program':14} {'kernel':24} " + " ".join(f"{c:>12}" for c in COUNTS))
    for label, (file, defines) in PROGRAMS.items():
        try:
            program = device.program(file, tuple(sorted(defines.items())))
        except cl.Error:  # not NVIDIA's driver: no dp4a through inline PTX
            defines = {k: v for k, v in defines.items() if k != "NV_DP4A"}
            program = device.program(file, tuple(sorted(defines.items())))
        binary = program.binaries[0]
        (out / f"{label}.ptx").write_bytes(binary)
        text = binary.decode("utf-8", "replace")
        for name, body in kernels_of(text).items():
            counts = [len(re.findall(rx, body, re.M)) for rx in COUNTS.values()]
            print(f"{label:14} {name:24} " + " ".join(f"{n:>12}" for n in counts))


if __name__ == "__main__":
    main()
