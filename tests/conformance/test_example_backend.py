"""The example backend package (examples/llmrt-numpy), installed as a third party's would be: the
whole backend suite on it through the pytest plugin, and a greedy run through the command line.

CI installs it (.ci/run) and sets LLMRT_REQUIRE_EXAMPLE=1, so that there a missing install fails
rather than skips; elsewhere the skip says how to install it (`pytest -rs`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

import pytest

from llmrt.testing import cases

DIST = "llmrt-numpy"
LLMRT = shutil.which("llmrt") or "llmrt"


@pytest.fixture(scope="module")
def example():
    try:
        distribution(DIST)
    except PackageNotFoundError:
        why = f"{DIST} is not installed (pip install ./examples/llmrt-numpy)"
        if os.environ.get("LLMRT_REQUIRE_EXAMPLE"):
            pytest.fail(f"{why}, and LLMRT_REQUIRE_EXAMPLE is set")
        pytest.skip(why)


def test_the_example_passes_the_whole_suite(example, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--llmrt-device",
         "example:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    # every case (its own registered one too), the smoke test, two tiny models and a real one,
    # none skipped: the example declines nothing
    expected = len(cases()) + 4
    assert re.match(rf"{expected} passed in ", summary), summary
    assert "example:mul_mat(type_a=q4_0,m=48,k=64,t=40)" in [c.id for c in cases()]


def test_a_greedy_run_on_the_example_prints_what_the_cpu_prints(example):
    def run(device: str) -> str:
        result = subprocess.run(
            [LLMRT, "run", "-m", "smollm2-135m", "-p", "The capital of France is", "-n", "5",
             "--temp", "0", "--device", device],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    # the reference's top-2 gaps over these 5 steps are 1.0 and more: no near tie to flip
    assert run("example") == run("cpu") == "The capital of France is Paris.\n\nThe\n"
