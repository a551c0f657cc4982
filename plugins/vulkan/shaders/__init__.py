"""GLSL compute shaders and the SPIR-V compiled from them, shipped side by side.

Each entry of VARIANTS names a SPIR-V file, the .comp it is compiled from and the macros it is
compiled with. `python -m llmrt_vulkan.shaders` recompiles them all with glslc, the
cooperative-matrix ones with $LLMRT_GLSLC (a glslc of 2024 or newer); that is for developers only,
users load the shipped .spv. tests/plugins/test_vulkan_shaders.py checks that the shipped files
are what the sources compile to.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
TARGET_ENV = "vulkan1.1"

# spv name -> (source, macros). The "_sg" variants reduce through subgroup arithmetic.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (source, macros)
    for source in ("eltwise", "norm", "softmax", "argmax", "rope", "get_rows", "set_rows",
                   "matvec", "matvec_rows", "matmul", "matmul_batched", "flash_attn",
                   "flash_attn_rows")
    for name, macros in ((source, ()), (f"{source}_sg", ("USE_SUBGROUP",)))
    if not name.endswith("_sg") or source in ("norm", "softmax", "matvec", "flash_attn")
}  # fmt: skip
# the integer mat-vec: with (_dot) or without OpSDot, per row (lavapipe) or per workgroup; "_sg"
# reduces through clustered subgroup adds
VARIANTS["quantize_q8"] = ("quantize_q8", ())
VARIANTS["attn_combine"] = ("attn_combine", ())
for _dot in ("", "_dot"):
    for _kind, _macros in (("", ()), ("_sg", ("USE_SUBGROUP",)), ("_rows", ("PER_ROW",))):
        VARIANTS[f"matvec_q8{_dot}{_kind}"] = (
            "matvec_q8",
            (*_macros, *(("USE_DOT",) if _dot else ())),
        )
# the integer mat-vec that makes its q8 blocks itself, from the f32 values' producer (PROLOGUE)
for _dot in ("", "_dot"):
    for _kind, _macros in (("", ()), ("_sg", ("USE_SUBGROUP",))):
        VARIANTS[f"matvec_q8p{_dot}{_kind}"] = (
            "matvec_q8",
            ("PROLOGUE", *_macros, *(("USE_DOT",) if _dot else ())),
        )
CLUSTERED = frozenset(n for n in VARIANTS if n.startswith("matvec_q8") and n.endswith("_sg"))


# the prompt matmul on cooperative matrices: CM x CM x CM products with subgroups of SG (16 and 32
# on NVIDIA, 8 and 8 on lavapipe), in tiles of 64 weight rows x BN tokens, SGM x SGN subgroups of
# one weight block each (no layout of more ran the H100's prompts faster on both the 1B and the
# 8B: BENCHMARKS.md, 2026-12-07, eighteenth). The "_wide" variants, for prompts of WIDE_FROM
# tokens or more, load and dequantize each weight tile for 256 tokens (lavapipe's 128, within its
# 32 KiB of shared memory): the H100's pp512 of the 8B 1.40 times and the 1B's 1.10 times as fast.
def _coop(cm: int, sg: int, sgm: int, sgn: int, bn: int = 64) -> tuple[str, tuple[str, ...]]:
    sizes = {"CM": cm, "SG": sg, "SGM": sgm, "SGN": sgn, "BM": 64, "BN": bn}
    return "matmul_coop", tuple(f"{k}={v}" for k, v in sizes.items())


VARIANTS["matmul_coop"] = _coop(16, 32, 4, 4)
VARIANTS["matmul_coop_wide"] = _coop(16, 32, 4, 4, 256)
VARIANTS["matmul_coop8"] = _coop(8, 8, 8, 8)
VARIANTS["matmul_coop8_wide"] = _coop(8, 8, 8, 8, 128)
WIDE_FROM = 256
# and where they still make this many workgroups (the 1B's products of 2048 rows at 512 tokens
# make 32 x 2; the probe that measured the gain ran every product wide): the 135M's products
# (576-1536 rows) keep the 64 x 64 tiles, under which its pp512 was measured
WIDE_MIN_GROUPS = 64
# a prompt's attention on the matrix units: BR query rows a workgroup of NSG subgroups, keys 32
# at a time (flash_attn_coop.comp). A decode step deep in a context keeps flash_attn.comp: a variant
# of 16 rows and 64 keys a block ran the 8B's tg64 at depth 16384 at 80 t/s against 144
# (BENCHMARKS.md, 2026-12-07, seventeenth)
VARIANTS["flash_attn_coop"] = ("flash_attn_coop", ("CM=16", "SG=32", "NSG=4", "BR=32"))
VARIANTS["flash_attn_coop8"] = ("flash_attn_coop", ("CM=8", "SG=8", "NSG=8", "BR=16"))


def _sizes(name: str) -> dict[str, int]:
    return {k: int(v) for k, _, v in (m.partition("=") for m in VARIANTS.get(name, ("", ()))[1])}


def token_tile(name: str) -> int:
    """Tokens a workgroup of a tiled prompt matmul variant takes (its BN)."""
    return _sizes(name).get("BN", 64)


def row_tile(name: str) -> int:
    """Weight rows a workgroup of a tiled prompt matmul variant takes (its BM)."""
    return _sizes(name).get("BM", 64)


def attn_rows_tile(name: str) -> int:
    """Query rows (tokens x heads of one KV head) a workgroup of flash_attn_coop takes (its BR)."""
    return _sizes(name)["BR"]


def coop_shared_bytes(name: str) -> int:
    """The shared memory a matmul_coop variant declares: its f16 tiles of BM and BN rows of 40
    halves, and a CM x SC f32 staging block a subgroup (matmul_coop.comp's SK and SC)."""
    z = _sizes(name)
    staging = z["CM"] * (z["CM"] + 4 if z["CM"] == 16 else z["CM"]) * 4
    return (z["BM"] + z["BN"]) * 40 * 2 + z["SGM"] * z["SGN"] * staging


def attn_coop_shared_bytes(name: str, dk: int, dv: int) -> int:
    """The shared memory flash_attn_coop.comp declares for head sizes dk and dv: f16 rows of Q,
    of a block's keys or values and of its weights, an f32 block of scores or of P V, and the
    reduction scratch of common.glsl."""
    z = _sizes(name)
    bc = z.get("BC", 32)
    wg = z["SG"] * z["NSG"]
    f16 = z["BR"] * (dk + 8) + bc * (max(dk, dv) + 8) + z["BR"] * (bc + 8)
    return 2 * f16 + 4 * z["BR"] * (max(dv, bc) + 4) + 4 * wg + 2 * z["NSG"] * 4


# GL_KHR_cooperative_matrix needs glslang 14 (2024) or newer, which Debian 12's glslc predates:
# these variants are compiled by $LLMRT_GLSLC where it is set
NEWER_GLSLC = frozenset(n for n in VARIANTS if "_coop" in n)


def glslc_command(name: str, output: Path | str) -> list[str]:
    source, macros = VARIANTS[name]
    glslc = os.environ.get("LLMRT_GLSLC", "glslc") if name in NEWER_GLSLC else "glslc"
    return [
        glslc, f"--target-env={TARGET_ENV}", "-O", f"-I{HERE}",
        *(f"-D{m}" for m in macros), str(HERE / f"{source}.comp"), "-o", str(output),
    ]  # fmt: skip


def compile_all(directory: Path = HERE) -> list[Path]:
    """Compile every variant with glslc into `directory`; returns the files written."""
    if shutil.which("glslc") is None:
        raise RuntimeError("glslc is not on PATH (apt install glslc)")
    written = []
    for name in VARIANTS:
        if name in NEWER_GLSLC and "LLMRT_GLSLC" not in os.environ:
            print(f"{name}.spv left as shipped: LLMRT_GLSLC names no newer glslc")
            continue
        out = Path(directory) / f"{name}.spv"
        subprocess.run(glslc_command(name, out), check=True)
        written.append(out)
    return written


@functools.cache
def spirv(name: str) -> bytes:
    """The shipped SPIR-V of one variant."""
    return (HERE / f"{name}.spv").read_bytes()
