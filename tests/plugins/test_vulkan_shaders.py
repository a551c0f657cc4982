"""The SPIR-V shipped in llmrt_vulkan/shaders is what its GLSL sources compile to (users need no
shader compiler, so a stale .spv would run old code): each variant is recompiled with glslc and
compared byte for byte, or by disassembly where only the generator's header differs."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from llmrt_vulkan import shaders

pytestmark = pytest.mark.skipif(shutil.which("glslc") is None, reason="glslc is not installed")


def _disassemble(path) -> list[str]:
    text = subprocess.run(
        ["spirv-dis", "--raw-id", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [line for line in text.splitlines() if not line.startswith("; Generator")]


@pytest.mark.parametrize("name", sorted(shaders.VARIANTS))
def test_shipped_spirv_matches_source(name, tmp_path):
    fresh = tmp_path / f"{name}.spv"
    done = subprocess.run(shaders.glslc_command(name, fresh), capture_output=True, text=True)
    if done.returncode and name in shaders.NEWER_GLSLC and "LLMRT_GLSLC" not in os.environ:
        assert "extension not supported: GL_KHR_cooperative_matrix" in done.stderr, done.stderr
        pytest.skip("this glslc predates GL_KHR_cooperative_matrix: set LLMRT_GLSLC to a newer one")
    assert done.returncode == 0, done.stderr
    shipped = shaders.HERE / f"{name}.spv"
    assert shipped.is_file(), f"{shipped.name} is not shipped: run python -m llmrt_vulkan.shaders"
    if fresh.read_bytes() == shipped.read_bytes():
        return
    if shutil.which("spirv-dis") is None:
        pytest.fail(f"{shipped.name} differs from its source: run python -m llmrt_vulkan.shaders")
    assert _disassemble(fresh) == _disassemble(shipped), (
        f"{shipped.name} is stale: run python -m llmrt_vulkan.shaders"
    )


def test_every_shipped_spirv_has_a_variant():
    shipped = {p.stem for p in shaders.HERE.glob("*.spv")}
    assert shipped == set(shaders.VARIANTS)


def test_cooperative_matrix_variants_fit_their_devices_shared_memory():
    """The 8 x 8 variants are lavapipe's (32 KiB of shared memory), the 16 x 16 ones NVIDIA's (48
    KiB); a device with less takes matmul_coop's narrow tiles only (Runtime.coopmat_wide)."""
    limits = {"matmul_coop": 48 << 10, "matmul_coop8": 32 << 10}
    for name in (n for n in shaders.VARIANTS if n.startswith("matmul_coop")):
        limit = limits[name.removesuffix("_wide")]
        assert 0 < shaders.coop_shared_bytes(name) <= limit, name
    assert shaders.token_tile("matmul_coop_wide") == 256 > shaders.token_tile("matmul_coop")
    # the attention's, with heads of 128 (the largest the host gives them)
    for name in (n for n in shaders.VARIANTS if n.startswith("flash_attn_coop")):
        limit = limits[name.replace("flash_attn", "matmul")]
        assert 0 < shaders.attn_coop_shared_bytes(name, 128, 128) <= limit, name
