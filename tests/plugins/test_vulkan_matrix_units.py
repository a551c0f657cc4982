"""The prompt matmul and attention on cooperative matrices (matmul_coop.comp, flash_attn_coop.comp)
on a Vulkan driver that has them without a GPU: Mesa 26's lavapipe (VK_KHR_cooperative_matrix, 8x8x8
products). Debian 12's Mesa 22, the suite's own lavapipe, has not, so CI unpacks the newer driver
with the glibc it needs (.ci/mesa26.sh, into $LLMRT_MESA26) and the cases run in a child process
started by that glibc's loader, with the GPU kernel family forced: the cooperative-matrix tests of
test_vulkan_backend.py and the mul_mat and attention conformance cases on vulkan:0. Where
$LLMRT_MESA26 is unset (a developer's machine), this is skipped; CI sets it, so there a broken
driver setup fails rather than skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MESA = os.environ.get("LLMRT_MESA26")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not MESA, reason="LLMRT_MESA26 names no Mesa 26 (bash .ci/mesa26.sh DEST)")
def test_cooperative_matrices_on_mesa26_lavapipe():
    lib = Path(MESA, "usr/lib/x86_64-linux-gnu")
    env = {**os.environ, "VK_ICD_FILENAMES": f"{MESA}/lvp_icd.json",
           "VK_DRIVER_FILES": f"{MESA}/lvp_icd.json", "LLMRT_VULKAN_KERNELS": "gpu"}  # fmt: skip
    child = [str(lib / "ld-linux-x86-64.so.2"), "--library-path", str(lib), sys.executable]
    pytest_args = ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    checks = (
        ["tests/plugins/test_vulkan_backend.py", "-k", "cooperative"],
        ["tests/conformance", "-k", "vulkan and (mul_mat or attn or attention)"],
    )
    for args in checks:
        run = subprocess.run([*child, *pytest_args, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=1200)  # fmt: skip
        summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        # every case ran: none skipped for want of the driver's cooperative matrices
        assert "passed" in summary and "skipped" not in summary, summary
