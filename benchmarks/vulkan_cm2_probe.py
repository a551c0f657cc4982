"""The prompt matmul on NVIDIA's cooperative matrix 2 (VK_NV_cooperative_matrix2), which llmrt
does not ship: workgroup-scope matrices whose staging through shared memory the driver plans, the
weights decoded from their GGUF blocks as the driver loads them (vulkan_cm2/matmul_cm2.comp). On
the H100 it ran pp512 slower than matmul_coop_wide on every row (BENCHMARKS.md, 2026-12-07,
eighteenth). This probe makes the logical device with what the shader needs, builds it with one
edit at a time (other tiles and k-steps, f32 loads converted, every tile's bounds checked, an
unroll hint, the activations read as f16, f16 accumulators) and puts it in place of each prompt
matmul_coop dispatch: timed as prompt_paths.py, or checked against numpy (the probes marked
"timing only" compute wrong values by design). Needs a glslc of 2024 or newer.

    LLMRT_GLSLC=glslc python benchmarks/vulkan_cm2_probe.py MODEL.gguf vulkan:0 [N_PROMPT] [R]
    LLMRT_GLSLC=glslc python benchmarks/vulkan_cm2_probe.py --check vulkan:0

(PROBES="a,b" takes the probes whose labels contain a or b.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prompt_paths import time_paths
from vulkan_coop_probe import check, edited

SOURCE = Path(__file__).parent / "vulkan_cm2" / "matmul_cm2.comp"
# VkPhysicalDeviceCooperativeMatrix2FeaturesNV, which the `vulkan` package (1.3.275) predates: its
# sType, then (after pNext) seven VkBool32 from uint32 4 on, of which the shader needs workgroup
# scope (0), flexible dimensions (1), conversions (3), tensor addressing (5) and block loads (6)
COOPMAT2_EXT, COOPMAT2_STYPE, COOPMAT2_NEEDS = (
    "VK_NV_cooperative_matrix2",
    1000593000,
    (0, 1, 3, 5, 6),
)
_kept: list[Any] = []  # chained feature structs, alive until the device is made


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
# f16 accumulators, converted to f32 for the store: less exact than llmrt's f32 sums, and what
# llama.cpp's "f16acc" pipelines run at its default precision
_F32_ACC = "coopmat<float, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator>"
F16_ACCUMULATORS = (
    _F32_ACC,
    _F32_ACC.replace("float", "float16_t"),
    "coopMatStoreTensorNV(acc, d,",
    f"coopMatStoreTensorNV({_F32_ACC}(acc), d,",
)

# label -> (old, new) pairs applied to matmul_cm2.comp
PROBES: dict[str, tuple[str, ...]] = {
    "256 x 128 tiles": (),
    "128 x 128 tiles": tile(128, 128),
    "k-steps of 64": ("#define BK 32", "#define BK 64"),
    "activations loaded as f32, then converted": F32_THEN_CONVERTED,
    "every tile's bounds checked": ("if (m0 + BM <= p.rows", "if (p.k == 0u && m0 + BM <= p.rows"),
    "k-loop unroll hint": UNROLL,
    "activations read as f16 (timing only)": F16_ACTIVATIONS,
    "activations read as f16, unroll hint (timing only)": F16_ACTIVATIONS + UNROLL,
    "f16 accumulators": F16_ACCUMULATORS,
    "f16 accumulators, activations read as f16, unroll hint (timing only)": F16_ACCUMULATORS
    + F16_ACTIVATIONS
    + UNROLL,
}


def enable_cooperative_matrix2() -> None:
    """Every logical device made from here on enables VK_NV_cooperative_matrix2 and the features
    matmul_cm2.comp needs (the Runtime's own vkCreateDevice call, wrapped): buffer device
    addresses and 16-bit storage for the decode functions' block references, 16-bit ints."""
    import vulkan as vk

    device_info = vk.VkDeviceCreateInfo

    def with_cm2(**kw: Any) -> Any:
        raw = vk.ffi.new("uint32_t[12]")
        raw[0] = COOPMAT2_STYPE
        for i in COOPMAT2_NEEDS:
            raw[4 + i] = 1
        chain = kw.pop("pNext", None)  # the Runtime's features, after these
        if chain is not None:
            vk.ffi.cast("VkBaseOutStructure *", raw).pNext = vk.ffi.cast(
                "VkBaseOutStructure *", vk.ffi.addressof(chain)
            )
        address = vk.VkPhysicalDeviceBufferDeviceAddressFeatures(
            pNext=vk.ffi.cast("void *", raw), bufferDeviceAddress=vk.VK_TRUE
        )
        storage = vk.VkPhysicalDevice16BitStorageFeatures(
            pNext=address, storageBuffer16BitAccess=vk.VK_TRUE
        )
        features = vk.VkPhysicalDeviceFeatures(shaderInt16=vk.VK_TRUE)
        _kept.extend((raw, chain, address, storage, features))
        kw["ppEnabledExtensionNames"] = [*(kw.get("ppEnabledExtensionNames") or []), COOPMAT2_EXT]
        return device_info(pNext=storage, pEnabledFeatures=features, **kw)

    vk.VkDeviceCreateInfo = with_cm2


def build(edits: tuple[str, ...], out: Path) -> tuple[bytes, int, int]:
    """matmul_cm2.comp with `edits` applied, compiled; its SPIR-V and tile (BM, BN)."""
    comp = edited(SOURCE, edits, out)
    glslc = os.environ.get("LLMRT_GLSLC", "glslc")
    subprocess.run([glslc, "--target-env=vulkan1.3", "-O", str(comp), "-o", str(out)], check=True)
    rows, tokens = re.search(r"#define BM (\d+)\n#define BN (\d+)", comp.read_text()).groups()
    return out.read_bytes(), int(rows), int(tokens)


def probe_paths(dev) -> Iterator[str]:
    """Each probe built and put in place of the prompt's matmul_coop dispatches: the same
    bindings and push constants; the block's bytes and weights as specialization constants 1
    and 2; workgroups of the probe's tile."""
    import llmrt_vulkan.launch as launch
    from llmrt_vulkan import shaders

    if dev.runtime.coopmat is None:
        raise SystemExit(f"{dev.id} has no cooperative matrices")
    wanted = [w for w in os.environ.get("PROBES", "").split(",") if w]
    probes = {k: v for k, v in PROBES.items() if not wanted or any(w in k for w in wanted)}
    with tempfile.TemporaryDirectory() as tmp:
        built = {f"matmul_cm2_probe{i}": build(e, Path(tmp, f"p{i}.spv")) for i, e in
                 enumerate(probes.values())}  # fmt: skip
    shipped, mat_vec = shaders.spirv, launch.mat_vec
    shaders.spirv = lambda name: built[name][0] if name in built else shipped(name)
    for label, name in zip(probes, built, strict=True):
        _, bm, bn = built[name]

        def swapped(prog: Any, st: Any, name: str = name, bm: int = bm, bn: int = bn) -> list:
            out = mat_vec(prog, st)
            for d in (d for d in out if d.shader.startswith("matmul_coop")):
                rows, t, wtype = d.push[2], d.push[3], st.params["type"]
                d.shader, d.groups = name, (-(-rows // bm), -(-t // bn), 1)
                d.spec = (d.spec[0], wtype.type_size, wtype.block_size)
                d.push = (*d.push[:8], d.groups[0])
            return out

        launch.LAUNCHES["gemm"] = launch.LAUNCHES["mmv"] = swapped  # read when a graph is built
        yield f"matmul_cm2 {label}"
    launch.LAUNCHES["gemm"] = launch.LAUNCHES["mmv"] = mat_vec
    shaders.spirv = shipped


if __name__ == "__main__":
    enable_cooperative_matrix2()
    if sys.argv[1] == "--check":  # --check DEVICE
        check(sys.argv[2], probe_paths)
    else:
        time_paths(probe_paths, sys.argv[1:])
