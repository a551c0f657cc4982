"""The distribution a non-editable install gets (`pip install 'llmrt[cuda]'` from a wheel, not the
README's editable checkout): every file a backend or the server reads at run time beside its
Python (kernel sources and their headers, shaders, the web UI) is in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# read at run time: OpenCL C and CUDA sources (built on the user's device), GLSL and its SPIR-V,
# the web UI
RUNTIME_FILES = ("plugins/*/kernels/*", "plugins/*/shaders/*", "core/server/static/*")
SUFFIXES = {".cl", ".h", ".cu", ".cuh", ".comp", ".glsl", ".spv", ".html", ".js", ".css"}


def _installed_name(path: Path) -> str:
    """Where a source file lands in the wheel: core/ is llmrt, plugins/<x>/ is llmrt_<x>."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "core":
        return "/".join(("llmrt", *parts[1:]))
    return "/".join((f"llmrt_{parts[1]}", *parts[2:]))


def test_the_wheel_holds_every_file_the_backends_read_at_run_time(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("core", "plugins"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = sorted(_installed_name(p) for pattern in RUNTIME_FILES for p in ROOT.glob(pattern)
                    if p.is_file() and p.suffix in SUFFIXES)  # fmt: skip
    assert any(w.endswith("/kernels/common.h") for w in wanted)
    assert [w for w in wanted if w not in names] == []
