"""Where matmul_coop's time goes: a prompt's pp (as prompt_paths.py) with the runtime's
matmul_coop rebuilt with one part of its K-step taken out at a time (the weight tile's loads and
dequantization, the activation tile's loads, the stores into shared memory, the products), whose
outputs are wrong by design (only their time is read); then correct variants of it (other
layouts of the accumulators, other orders of the products, tiles of more tokens), whose logits
equal the shipped kernel's on Mesa 26's lavapipe. Needs a glslc of 2024 or newer.

    LLMRT_GLSLC=glslc python benchmarks/vulkan_coop_probe.py MODEL.gguf vulkan:0 [N_PROMPT] [R]
    LLMRT_GLSLC=glslc python benchmarks/vulkan_coop_probe.py --check vulkan:0

(PROBES="a,b" takes the probes whose labels contain a or b.) --check compares each probe's
outputs with numpy's instead of timing it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from prompt_paths import time_paths

WEIGHTS = ("deq4((m0 + r) * p.row_bytes, k0 + c)", "vec4(float(r + c) * 0.001)")
ACTIVATIONS = ("b4[p.ob4 + (t0 + r) * (p.k / 4u) + (k0 + c) / 4u]", "vec4(float(r + c) * 0.001)")
# a store or product on a condition never true: what it reads is still loaded
_W, _X = "Ws[r * SK + c + q] = wr[j][q];", "Xs[r * SK + c + q] = float16_t(xr[j][q]);"
STORES = (_W, f"if (p.k == 0u) {_W}", _X, f"if (p.k == 0u) {_X}")
_MMA = "acc[i][j] = coopMatMulAdd(a[i], b[j], acc[i][j]);"
PRODUCTS = (_MMA, f"if (p.k == 0u) {_MMA}")


def layout(am: int, an: int, tokens: int = 64, rows: int = 64) -> tuple[str, ...]:
    """The edit that gives each subgroup am x an accumulators of a tile of `rows` weight rows x
    `tokens` (probe_paths tells the host of a tile other than 64 x 64)."""
    return (
        "#define WG (SG * SGM * SGN)",
        f"#undef BN\n#define BN {tokens}\n#undef BM\n#define BM {rows}\n"
        f"#undef SGM\n#undef SGN\n#define SGM (BM / CM / {am})\n#define SGN (BN / CM / {an})\n"
        "#define WG (SG * SGM * SGN)",
    )


WIDE = layout(1, 4, 256)  # NVIDIA's matmul_coop_wide as shipped

# the activations read as f16 (8 bytes for 4 values, from the same binding's first half): what
# f16 copies of the activations would cost in the K-loop
F16_ACTIVATIONS = (
    "layout(binding = 1) readonly buffer B { vec4 b4[]; };",
    "layout(binding = 1) readonly buffer B { vec4 b4[]; };\n"
    "layout(binding = 1) readonly buffer B2 { uvec2 b2[]; };",
    ACTIVATIONS[0],
    "vec4(unpackHalf2x16(b2[p.ob4 + (t0 + r) * (p.k / 4u) + (k0 + c) / 4u].x), "
    "unpackHalf2x16(b2[p.ob4 + (t0 + r) * (p.k / 4u) + (k0 + c) / 4u].y))",
)


_LOAD_A = "Xs, (st + CM * i) * SK + kk, SK, gl_CooperativeMatrixLayoutRowMajor);"
_LOAD_B = "Ws, (sr + CM * j) * SK + kk, SK, gl_CooperativeMatrixLayoutColumnMajor);"
_FRAGMENTS = f"""            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> a[AN];
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> b[AM];
            [[unroll]] for (uint i = 0; i < AN; i++)
                coopMatLoad(a[i], {_LOAD_A}
            // B is k x rows: the weight tile's rows are its columns
            [[unroll]] for (uint j = 0; j < AM; j++)
                coopMatLoad(b[j], {_LOAD_B}
            [[unroll]] for (uint i = 0; i < AN; i++)
                [[unroll]] for (uint j = 0; j < AM; j++)
                    acc[i][j] = coopMatMulAdd(a[i], b[j], acc[i][j]);
"""
ONE_AT_A_TIME = (
    _FRAGMENTS,
    f"""            [[unroll]] for (uint i = 0; i < AN; i++) {{
                coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> a;
                coopMatLoad(a, {_LOAD_A}
                [[unroll]] for (uint j = 0; j < AM; j++) {{
                    coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> b;
                    coopMatLoad(b, {_LOAD_B}
                    acc[i][j] = coopMatMulAdd(a, b, acc[i][j]);
                }}
            }}
""",
)


# the weight tile as the products' A (row-major) and the activations as B (column-major), as
# llama.cpp's Vulkan matmul has them: an accumulator is weight rows x tokens, stored column-major
WEIGHTS_AS_A = (
    _FRAGMENTS,
    f"""            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> a[AN];
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> b[AM];
            [[unroll]] for (uint i = 0; i < AN; i++)
                coopMatLoad(a[i], {_LOAD_A.replace("RowMajor", "ColumnMajor")}
            [[unroll]] for (uint j = 0; j < AM; j++)
                coopMatLoad(b[j], {_LOAD_B.replace("ColumnMajor", "RowMajor")}
            [[unroll]] for (uint i = 0; i < AN; i++)
                [[unroll]] for (uint j = 0; j < AM; j++)
                    acc[i][j] = coopMatMulAdd(b[j], a[i], acc[i][j]);
""",
    "coopMatStore(acc[i][j], Cs[sg], 0, SC, gl_CooperativeMatrixLayoutRowMajor);",
    "coopMatStore(acc[i][j], Cs[sg], 0, SC, gl_CooperativeMatrixLayoutColumnMajor);",
)


# the tiles in two buffers, a K-step's stores into the one the step before did not read: one
# barrier a step instead of two
DOUBLE_BUFFERED = (
    "shared float16_t Xs[BN * SK];",
    "shared float16_t Xs[2 * BN * SK];",
    "shared float16_t Ws[BM * SK];",
    "shared float16_t Ws[2 * BM * SK];",
    "k0 += BK) {\n",
    "k0 += BK) {\n        uint buf = ((k0 / BK) & 1u) * BM * SK;  // BM == BN\n",
    "Ws[r * SK + c + q]",
    "Ws[buf + r * SK + c + q]",
    "Xs[r * SK + c + q]",
    "Xs[buf + r * SK + c + q]",
    "Xs, (st + CM * i)",
    "Xs, buf + (st + CM * i)",
    "Ws, (sr + CM * j)",
    "Ws, buf + (sr + CM * j)",
    "        }\n        barrier();\n    }",
    "        }\n    }",
)


# the accumulators in a one-dimensional array (as llama.cpp's sums[]) instead of acc[AN][AM]
FLAT_ACCUMULATORS = ("acc[AN][AM]", "acc[AN * AM]", "acc[i][j]", "acc[i * AM + j]")


def unrolled(am: int, an: int) -> tuple[str, ...]:
    """layout(am, an) with the K-step's fragment loads and products written out, every index a
    literal, instead of loops the compiler is asked to unroll."""
    a = "coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA>"
    b = "coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB>"
    pad = " " * 12
    lines = [
        f"{pad}{a} a{i};\n{pad}coopMatLoad(a{i}, {_LOAD_A.replace('* i', f'* {i}u')}"
        for i in range(an)
    ]
    lines += [
        f"{pad}{b} b{j};\n{pad}coopMatLoad(b{j}, {_LOAD_B.replace('* j', f'* {j}u')}"
        for j in range(am)
    ]
    lines += [
        f"{pad}acc[{i}][{j}] = coopMatMulAdd(a{i}, b{j}, acc[{i}][{j}]);"
        for i in range(an)
        for j in range(am)
    ]
    return layout(am, an) + (_FRAGMENTS, "\n".join(lines) + "\n")


# the products' loops nested the other way: the weight blocks outside, the token blocks inside
_I_LOOP = "[[unroll]] for (uint i = 0; i < AN; i++)\n"
_J_LOOP = "[[unroll]] for (uint j = 0; j < AM; j++)\n"
_NEST = "                "
LOOPS_SWAPPED = (
    f"{_I_LOOP}{_NEST}{_J_LOOP}{_NEST}    acc[i][j] = coopMatMulAdd",
    f"{_J_LOOP}{_NEST}{_I_LOOP}{_NEST}    acc[i][j] = coopMatMulAdd",
)


# the tiles in shared memory as f16vec2 (as llama.cpp's buf_a and buf_b), where they were halves:
# the same bytes, the fragments loaded in units of two halves
TILES_F16VEC2 = (
    "shared float16_t Xs[BN * SK];",
    "shared f16vec2 Xs[BN * SK / 2];",
    "shared float16_t Ws[BM * SK];",
    "shared f16vec2 Ws[BM * SK / 2];",
    "[[unroll]] for (uint q = 0; q < 4; q++) Ws[r * SK + c + q] = wr[j][q];",
    "Ws[(r * SK + c) / 2] = wr[j].xy; Ws[(r * SK + c) / 2 + 1] = wr[j].zw;",
    "[[unroll]] for (uint q = 0; q < 4; q++) Xs[r * SK + c + q] = float16_t(xr[j][q]);",
    "Xs[(r * SK + c) / 2] = f16vec2(xr[j].xy); Xs[(r * SK + c) / 2 + 1] = f16vec2(xr[j].zw);",
    "Xs, (st + CM * i) * SK + kk, SK,",
    "Xs, ((st + CM * i) * SK + kk) / 2, SK / 2,",
    "Ws, (sr + CM * j) * SK + kk, SK,",
    "Ws, ((sr + CM * j) * SK + kk) / 2, SK / 2,",
)

# label -> (old, new) pairs applied to matmul_coop.comp
PROBES: dict[str, tuple[str, ...]] = {
    "as shipped (64 x 64)": (),
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
    # correct kernels with more than one accumulator a subgroup (am along the weight rows x an
    # along the tokens; the shipped kernel has one): fewer subgroups, fragments reused
    "2 x 2 accumulators a subgroup": layout(2, 2),
    "2 x 1 accumulators a subgroup": layout(2, 1),
    "1 x 2 accumulators a subgroup": layout(1, 2),
    # as llama.cpp's products: an A fragment loaded, then each B fragment and its product
    "2 x 2, fragments one at a time": layout(2, 2) + ONE_AT_A_TIME,
    "2 x 1, fragments one at a time": layout(2, 1) + ONE_AT_A_TIME,
    "weights as A": WEIGHTS_AS_A,
    "weights as A, 2 x 1": layout(2, 1) + WEIGHTS_AS_A,
    "weights as A, 1 x 2": layout(1, 2) + WEIGHTS_AS_A,
    "weights as A, 2 x 2": layout(2, 2) + WEIGHTS_AS_A,
    "double-buffered tiles": DOUBLE_BUFFERED,
    "2 x 2, one-dimensional accumulators": layout(2, 2) + FLAT_ACCUMULATORS,
    "2 x 1, one-dimensional accumulators": layout(2, 1) + FLAT_ACCUMULATORS,
    "1 x 2, one-dimensional accumulators": layout(1, 2) + FLAT_ACCUMULATORS,
    "4 x 1, one-dimensional accumulators": layout(4, 1) + FLAT_ACCUMULATORS,
    "2 x 1, products' loops swapped": layout(2, 1) + LOOPS_SWAPPED,
    "2 x 2, products' loops swapped": layout(2, 2) + LOOPS_SWAPPED,
    "2 x 1 written out": unrolled(2, 1),
    "1 x 2 written out": unrolled(1, 2),
    "2 x 2 written out": unrolled(2, 2),
    # tiles of more tokens, each weight block's fragment used by more products
    "1 x 4 accumulators a subgroup": layout(1, 4),
    "64 x 128 tiles, 1 x 2 a subgroup": layout(1, 2, 128),
    "64 x 128 tiles, 1 x 4 a subgroup": layout(1, 4, 128),
    "64 x 256 tiles, 1 x 4 a subgroup": WIDE,
    # where the wide tiles' time goes (the seventeenth session), and other tiles
    "wide, no weight loads": WIDE + WEIGHTS,
    "wide, no activation loads": WIDE + ACTIVATIONS,
    "wide, products alone": WIDE + WEIGHTS + ACTIVATIONS + STORES,
    "wide, activations read as f16": WIDE + F16_ACTIVATIONS,
    "128 x 128 tiles, 1 x 4, activations read as f16": layout(1, 4, 128, 128) + F16_ACTIVATIONS,
    "tiles as f16vec2, 64 x 64": TILES_F16VEC2,
    "tiles as f16vec2, 2 x 2 accumulators a subgroup": layout(2, 2) + TILES_F16VEC2,
    "tiles as f16vec2, 2 x 1 accumulators a subgroup": layout(2, 1) + TILES_F16VEC2,
    "tiles as f16vec2, wide": WIDE + TILES_F16VEC2,
    "tiles as f16vec2, 128 x 128 tiles, 2 x 4 a subgroup": layout(2, 4, 128, 128) + TILES_F16VEC2,
    "64 x 256 tiles, 1 x 8 a subgroup (8 subgroups)": layout(1, 8, 256),
    "128 x 128 tiles, 1 x 4 a subgroup": layout(1, 4, 128, 128),
    # with the output loop's trip count a constant (bba0820), two or more weight blocks a
    # subgroup keep their accumulators in registers
    "128 x 128 tiles, 2 x 2 a subgroup": layout(2, 2, 128, 128),
    "64 x 256 tiles, 2 x 4 a subgroup": layout(2, 4, 256),
    # tiles of more weight rows and tokens on 8 subgroups (NVIDIA's 48 KiB hold 128 x 256 with
    # 8 staging blocks, not 16): each weight and activation row loaded once for more products
    "128 x 128 tiles, 2 x 4 a subgroup": layout(2, 4, 128, 128),
    "128 x 128 tiles, 4 x 2 a subgroup": layout(4, 2, 128, 128),
    "128 x 256 tiles, 2 x 8 a subgroup": layout(2, 8, 256, 128),
    "128 x 256 tiles, 4 x 4 a subgroup": layout(4, 4, 256, 128),
}


def edited(source: Path, edits: tuple[str, ...], out: Path) -> Path:
    """`source` with the (old, new) pairs of `edits` applied, written beside `out` as a .comp."""
    text = source.read_text()
    for old, new in zip(edits[::2], edits[1::2], strict=True):
        assert old in text, f"the shader no longer has {old!r}"
        text = text.replace(old, new)
    comp = out.with_suffix(".comp")
    comp.write_text(text)
    return comp


def build(variant: str, edits: tuple[str, ...], out: Path) -> bytes:
    """matmul_coop.comp with `edits` applied, compiled as `variant` is."""
    from llmrt_vulkan import shaders

    source = shaders.HERE / f"{shaders.VARIANTS[variant][0]}.comp"
    comp = edited(source, edits, out)
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
    # PROBES="a,b": only the probes whose labels contain one of them
    wanted = [w for w in os.environ.get("PROBES", "").split(",") if w]
    probes = {k: v for k, v in PROBES.items() if not wanted or any(w in k for w in wanted)}
    with tempfile.TemporaryDirectory() as tmp:
        for i, edits in enumerate(probes.values()):
            name = f"{variant}_probe{i}"  # the runtime gives matmul_coop* their subgroup size
            built[name] = build(variant, edits, Path(tmp, f"{name}.spv"))
            # the host reads a variant's tile from its macros
            tiles = {
                k: re.search(rf"#define {k} (\d+)", "".join(edits[1::2])) for k in ("BM", "BN")
            }
            source, macros = shaders.VARIANTS[variant]
            sizes = tuple(f"{k}={m.group(1) if m else 64}" for k, m in tiles.items())
            kept = tuple(m for m in macros if m[:3] not in ("BM=", "BN="))
            shaders.VARIANTS[name] = (source, (*kept, *sizes))
    shipped, wide_from = shaders.spirv, shaders.WIDE_FROM
    shaders.spirv = lambda name: built[name] if name in built else shipped(name)
    shaders.WIDE_FROM = 1 << 30  # each probe's tile is its own, the narrow variant's unless set
    for label, name in zip(probes, built, strict=True):
        dev.runtime.coopmat = name  # read when a graph is lowered
        yield f"{variant} {label}"
    dev.runtime.coopmat, shaders.spirv, shaders.WIDE_FROM = variant, shipped, wide_from
    for name in built:
        del shaders.VARIANTS[name]


def check(device: str, paths: Callable[..., Iterator[str]] = probe_paths) -> None:
    """Each probe's prompt matmul against numpy's, in shapes that cut its tiles at both edges:
    the correct ones give the shipped kernel's nmse (f16 products), the others far more."""
    import numpy as np

    from llmrt.device import get_device
    from llmrt.gguf import GGMLType, dequantize, quantize
    from llmrt.ir import Graph
    from llmrt.testing.conformance import WeightData, nmse

    dev = get_device(device)
    rng = np.random.default_rng(4)
    cases = []
    for m, k, t in ((2100, 512, 300), (200, 512, 150)):
        raw = quantize(rng.uniform(-1, 1, (m, k)).astype(np.float32), GGMLType.Q4_0)
        w = dev.upload(WeightData("w", GGMLType.Q4_0, (m, k), raw.reshape(m, -1)))
        x = rng.uniform(-1, 1, (t, k)).astype(np.float32)
        cases.append((m, k, t, w, x, x @ dequantize(raw, GGMLType.Q4_0, (m, k)).T))
    for label in paths(dev):
        errors = []
        for m, k, t, w, x, want in cases:
            g = Graph("probe")
            g.output("out", g.mul_mat(g.weight("w", (m, k), GGMLType.Q4_0), g.input("x", (t, k))))
            errors.append(nmse(want, dev.compile(g, {"w": w}).run({"x": x})["out"]))
        print(f"{label}: nmse " + " / ".join(f"{e:.3g}" for e in errors), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--check":  # --check DEVICE
        check(sys.argv[2])
    else:
        time_paths(probe_paths, sys.argv[1:])
