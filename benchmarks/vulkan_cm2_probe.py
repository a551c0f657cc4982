"""matmul_cm2 (NVIDIA's cooperative matrix 2) in other shapes: a prompt's pp (as prompt_paths.py)
with the runtime's matmul_cm2 rebuilt with one edit at a time: other tiles, other k-steps, the
activations loaded as an f32 matrix and converted instead of through a decode function, every
tile's loads and stores checked against the matrix's bounds, an unroll hint. Needs a glslc
of 2024 or newer and a device with VK_NV_cooperative_matrix2.

    LLMRT_GLSLC=glslc python benchmarks/vulkan_cm2_probe.py MODEL.gguf vulkan:0 [N_PROMPT] [R]
    LLMRT_GLSLC=glslc python benchmarks/vulkan_cm2_probe.py --check vulkan:0

(PROBES="a,b" takes the probes whose labels contain a or b.) --check compares each probe's
outputs with numpy's instead of timing it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prompt_paths import time_paths
from vulkan_coop_probe import build, check


def tile(rows: int, tokens: int) -> tuple[str, ...]:
    return ("#define BM 256\n#define BN 128", f"#define BM {rows}\n#define BN {tokens}")


# the activations loaded as an f32 matrix, then converted to f16 (cooperativeMatrixConversions)
F32_THEN_CONVERTED = (
    "coopMatLoadTensorNV(xt, b,",
    "coopmat<float, gl_ScopeWorkgroup, BK, BN, gl_MatrixUseB> xf; coopMatLoadTensorNV(xf, b,",
    "transposed, activation);",
    "transposed);",
    "acc = coopMatMulAdd(wt, xt, acc);",
    "xt = coopmat<float16_t, gl_ScopeWorkgroup, BK, BN, gl_MatrixUseB>(xf); "
    "acc = coopMatMulAdd(wt, xt, acc);",
)

# the activations read as f16 values straight from the binding, with no decode function: wrong
# values (the f32 words' halves), the time that f16 copies of the activations would take
F16_ACTIVATIONS = (
    "layout(binding = 2) writeonly buffer D",
    "layout(binding = 1) readonly buffer B16 { float16_t b16[]; };\n"
    "layout(binding = 2) writeonly buffer D",
    "coopMatLoadTensorNV(xt, b, 4u * p.ob4,",
    "coopMatLoadTensorNV(xt, b16, 8u * p.ob4,",
    "transposed, activation);",
    "transposed);",
)
UNROLL = ("for (uint k0 = 0;", "[[unroll]] for (uint k0 = 0;")

# label -> (old, new) pairs applied to matmul_cm2.comp
PROBES: dict[str, tuple[str, ...]] = {
    "as shipped (256 x 128)": (),
    "128 x 128 tiles": tile(128, 128),
    "128 x 256 tiles": tile(128, 256),
    "k-steps of 64": ("#define BK 32", "#define BK 64"),
    "activations loaded as f32, then converted": F32_THEN_CONVERTED,
    "every tile's bounds checked": ("if (m0 + BM <= p.rows", "if (p.k == 0u && m0 + BM <= p.rows"),
    "k-loop unroll hint": UNROLL,
    "activations read as f16 (timing only)": F16_ACTIVATIONS,
    "activations read as f16, unroll hint (timing only)": F16_ACTIVATIONS + UNROLL,
    "activations read as f16, unroll hint, 128 x 256 tiles (timing only)": F16_ACTIVATIONS
    + UNROLL
    + tile(128, 256),
}


def probe_paths(dev) -> Iterator[str]:
    """Each probe of matmul_cm2, built and made the runtime's choice."""
    from llmrt_vulkan import shaders

    rt = dev.runtime
    if rt.coopmat2 is None:
        raise SystemExit(f"{dev.id} has no cooperative matrix 2")
    kept, built = rt.coopmat2, {}
    wanted = [w for w in os.environ.get("PROBES", "").split(",") if w]
    probes = {k: v for k, v in PROBES.items() if not wanted or any(w in k for w in wanted)}
    with tempfile.TemporaryDirectory() as tmp:
        for i, edits in enumerate(probes.values()):
            name = f"matmul_cm2_probe{i}"
            built[name] = build("matmul_cm2", edits, Path(tmp, f"{name}.spv"))
            found = re.search(r"#define BM (\d+)\n#define BN (\d+)", "".join(edits[1::2]))
            rows, tokens = found.groups() if found else (256, 128)
            shaders.VARIANTS[name] = ("matmul_cm2", (f"BM={rows}", f"BN={tokens}"))
    shipped = shaders.spirv
    shaders.spirv = lambda name: built[name] if name in built else shipped(name)
    for label, name in zip(probes, built, strict=True):
        rt.coopmat2 = name  # read when a graph is lowered
        yield f"matmul_cm2 {label}"
    rt.coopmat2, shaders.spirv = kept, shipped
    for name in built:
        del shaders.VARIANTS[name]


if __name__ == "__main__":
    if sys.argv[1] == "--check":  # --check DEVICE
        check(sys.argv[2], probe_paths)
    else:
        time_paths(probe_paths, sys.argv[1:])
