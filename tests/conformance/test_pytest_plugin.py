"""llmrt.testing as a pytest plugin, run as a third party runs it: from a project of its own,
with `--llmrt-device`, cases its plugins register included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = """
from llmrt import hookimpl
from llmrt.gguf import GGMLType
from llmrt.plugins import get_plugins
from llmrt.testing import OpCase


class MyCases:
    @hookimpl
    def register_conformance_cases(self, register):
        leaves = {"a": ("input", (3, 5), GGMLType.F32, "uniform")}
        register(OpCase("my_triple(3x5)", leaves, lambda g, x: g.scale(x["a"], 3.0)))


get_plugins().manager.register(MyCases(), "mycases")
"""


def pytest_in(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_suite_runs_on_a_named_device_with_registered_cases(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_mine.py").write_text("def test_mine(llmrt_device):\n    assert llmrt_device")
    result = pytest_in(tmp_path, "--llmrt-device", "cpu:0", "-k", "my_triple or smoke or mine")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
    listed = pytest_in(tmp_path, "--llmrt-device", "cpu:0", "--collect-only").stdout
    expected = [
        "test_op[cpu:0-my_triple(3x5)]",
        "test_op[cpu:0-mul_mat(type_a=q4_k,m=1,k=256,t=1)]",
        "test_smoke[cpu:0]",
        "test_tiny_model_greedy[cpu:0-Q8_0]",
        "test_real_model_greedy[cpu:0]",
        "test_mine[cpu:0]",
    ]
    assert [t for t in expected if t not in listed] == [], listed


def test_pyargs_collects_the_suite_and_a_bad_device_is_a_usage_error(tmp_path):
    listed = pytest_in(tmp_path, "--pyargs", "llmrt.testing", "--llmrt-device", "cpu",
                       "--collect-only")  # fmt: skip
    assert listed.returncode == 0 and "test_smoke[cpu:0]" in listed.stdout, listed.stdout
    assert listed.stdout.count("test_smoke[") == 1  # the suite once, though named twice
    bad = pytest_in(tmp_path, "--llmrt-device", "nosuch:0")
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "--llmrt-device: unknown device 'nosuch:0'" in bad.stderr


def test_a_real_model_can_be_left_out_and_says_so(tmp_path):
    result = pytest_in(tmp_path, "--llmrt-device", "cpu:0", "--llmrt-model", "none", "-rs",
                       "-k", "real_model")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "--llmrt-model none" in result.stdout
