"""Where matmul_coop's time goes: a prompt's pp (as prompt_paths.py) with the runtime's
matmul_coop rebuilt with one part of its K-step taken out at a time (the weight tile's loads and
dequantization, the activation tile's loads, the stores into shared memory, the products). The
outputs of a probe are wrong by design; only its time is read. Needs a glslc of 2024 or newer.

    LLMRT_GLSLC=glslc python benchmarks/vulkan_coop_probe.py MODEL.gguf vulkan:0 [N_PROMPT] [R]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prompt_paths import time_paths

WEIGHTS = ("deq4((m0 + r) * p.row_bytes, k0 + c)", "vec4(float(r + c) * 0.001)")
ACTIVATIONS = ("b4[p.ob4 + (t0 + r) * (p.k / 4u) + (k0 + c) / 4u]", "vec4(float(r + c) * 0.001)")
# a store or product on a condition never true: what it reads is still loaded
_W, _X = "Ws[r * SK + c + q] = wr[j][q];", "Xs[r * SK + c + q] = float16_t(xr[j][q]);"
STORES = (_W, f"if (p.k == 0u) {_W}", _X, f"if (p.k == 0u) {_X}")
_MMA = "acc[i][j] = coopMatMulAdd(a[i], b[j], acc[i][j]);"
PRODUCTS = (_MMA, f"if (p.k == 0u) {_MMA}")
# label -> (old, new) pairs applied to matmul_coop.comp
PROBES: dict[str, tuple[str, ...]] = {
    "as shipped": (),
    "no weight loads": WEIGHTS,
    "no activation loads": ACTIVATIONS,
    "no global loads": WEIGHTS + ACTIVATIONS,
    "no shared stores": STORES,
    "no products": PRODUCTS,
    # the weight tile read as the products' B in row-major order (the wrong one)
    "B row-major": ("LayoutColumnMajor", "LayoutRowMajor"),
    # the products on whatever shared memory holds: their fragment loads and the barriers
    "products alone": WEIGHTS + ACTIVATIONS + STORES,
    "products alone, no barriers": WEIGHTS + ACTIVATIONS + STORES + ("barrier();", ""),
    # a correct kernel: the tiles in shared memory as f16vec4 arrays (8-byte stores, fragments
    # loaded from a vector array, offsets and strides in its elements)
    "tiles as f16vec4": (
        "shared float16_t Xs[BN * SK];",
        "shared f16vec4 Xs[BN * SK / 4];",
        "shared float16_t Ws[BM * SK];",
        "shared f16vec4 Ws[BM * SK / 4];",
        "[[unroll]] for (uint q = 0; q < 4; q++) Ws[r * SK + c + q] = wr[j][q];",
        "Ws[(r * SK + c) / 4] = wr[j];",
        "[[unroll]] for (uint q = 0; q < 4; q++) Xs[r * SK + c + q] = float16_t(xr[j][q]);",
        "Xs[(r * SK + c) / 4] = f16vec4(xr[j]);",
        "Xs, (st + CM * i) * SK + kk, SK,",
        "Xs, ((st + CM * i) * SK + kk) / 4, SK / 4,",
        "Ws, (sr + CM * j) * SK + kk, SK,",
        "Ws, ((sr + CM * j) * SK + kk) / 4, SK / 4,",
    ),
    # a correct kernel: as many subgroups as CM x CM blocks in the tile (16 of 32 on NVIDIA),
    # each with one accumulator, so no array of them
    "one accumulator a subgroup": (
        "#define WG (SG * SGM * SGN)",
        "#undef SGM\n#undef SGN\n#define SGM (BM / CM)\n#define SGN (BN / CM)\n"
        "#define WG (SG * SGM * SGN)",
    ),
}


def build(variant: str, edits: tuple[str, ...], out: Path) -> bytes:
    """matmul_coop.comp with `edits` applied, compiled as `variant` is."""
    from llmrt_vulkan import shaders

    source = shaders.HERE / f"{shaders.VARIANTS[variant][0]}.comp"
    text = source.read_text()
    for old, new in zip(edits[::2], edits[1::2], strict=True):
        assert old in text, f"the shader no longer has {old!r}"
        text = text.replace(old, new)
    comp = out.with_suffix(".comp")
    comp.write_text(text)
    command = shaders.glslc_command(variant, out)
    command[command.index(str(source))] = str(comp)
    subprocess.run(command, check=True)
    return out.read_bytes()


def probe_paths(dev) -> Iterator[str]:
    """Each probe of the device's matmul_coop variant, built and made the runtime's choice."""
    from llmrt_vulkan import shaders

    variant = dev.runtime.coopmat
    if variant is None:
        raise SystemExit(f"{dev.id} has no cooperative matrix variant")
    built: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, edits in enumerate(PROBES.values()):
            name = f"{variant}_probe{i}"  # the runtime gives matmul_coop* their subgroup size
            built[name] = build(variant, edits, Path(tmp, f"{name}.spv"))
    shipped = shaders.spirv
    shaders.spirv = lambda name: built[name] if name in built else shipped(name)
    for label, name in zip(PROBES, built, strict=True):
        dev.runtime.coopmat = name  # read when a graph is lowered
        yield f"{variant} {label}"
    dev.runtime.coopmat, shaders.spirv = variant, shipped


if __name__ == "__main__":
    time_paths(probe_paths, sys.argv[1:])
