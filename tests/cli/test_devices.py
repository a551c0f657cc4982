"""`llmrt devices` on this machine: CPU, Vulkan (lavapipe) and OpenCL (PoCL) run; CUDA says why not.

The dev set-up (README) installs Mesa's lavapipe and PoCL, so both must be available here and in CI.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import pytest

LLMRT = shutil.which("llmrt") or "llmrt"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMRT, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def doc() -> dict:
    result = run("devices", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def backend(doc: dict, name: str) -> dict:
    (entry,) = [b for b in doc["backends"] if b["name"] == name]
    return entry


def test_schema(doc):
    assert doc["schema_version"] == 1
    assert doc["auto"] == doc["devices"][0]["id"]
    keys = {"id", "backend", "index", "name", "type", "memory_total", "memory_free", "summary",
            "properties", "computes", "computes_not_why"}  # fmt: skip
    for device in doc["devices"]:
        assert set(device) == keys
        assert device["type"] in {"gpu", "igpu", "accel", "cpu"}
        assert device["id"] == f"{device['backend']}:{device['index']}"
    assert doc["broken_plugins"] == []


def test_cpu_vulkan_opencl_available(doc):
    ids = [d["id"] for d in doc["devices"]]
    for name in ("cpu", "vulkan", "opencl"):
        assert backend(doc, name)["available"], backend(doc, name)["reason"]
        assert f"{name}:0" in ids
    cpu = next(d for d in doc["devices"] if d["id"] == "cpu:0")
    assert cpu["properties"]["cores"] >= 1 and cpu["memory_total"] > 0
    lavapipe = [d for d in doc["devices"] if d["backend"] == "vulkan"]
    assert any("llvmpipe" in d["name"] for d in lavapipe)
    pocl = [d for d in doc["devices"] if d["backend"] == "opencl"]
    assert any("Portable Computing Language" in d["properties"]["platform"] for d in pocl)


def test_auto_on_a_machine_without_gpu_is_the_native_cpu(doc):
    if any(d["type"] != "cpu" for d in doc["devices"]):
        pytest.skip("this machine has a GPU")
    assert doc["auto"] == "cpu:0"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_cuda_unavailable_says_why_and_how_to_fix(doc):
    cuda = backend(doc, "cuda")
    assert not cuda["available"] and cuda["devices"] == []
    assert cuda["reason"] == "cupy is not installed"
    assert "pip install 'llmrt[cuda]'" in cuda["fix"]
    table = run("devices")
    assert table.returncode == 0
    assert "cuda: unavailable: cupy is not installed" in table.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo:3", "unknown device 'foo:3': no backend 'foo'; available devices: cpu:0"),
        ("cpu:7", "no device 'cpu:7': cpu has 1 (cpu:0)"),
        ("vulkan:99", "no device 'vulkan:99'"),
        ("cuda:x", "bad device 'cuda:x'"),
    ],
)
def test_bad_device_is_one_line_and_exit_2(spec, message):
    result = run("devices", "--device", spec)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmrt: error: ")
    assert message in lines[0]
    assert "vulkan:0" in lines[0] and "opencl:0" in lines[0]
    assert "Traceback" not in result.stderr


def test_select_one_device():
    result = run("devices", "--device", "opencl", "--json")
    assert result.returncode == 0, result.stderr
    assert [d["id"] for d in json.loads(result.stdout)["devices"]] == ["opencl:0"]


def test_bad_flag_is_a_usage_error():
    result = run("devices", "--bogus")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_switches_not_at_their_default_are_reported():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMRT_CUDA", "LLMRT_VULKAN"))}
    plain = subprocess.run([LLMRT, "devices", "--json"], capture_output=True, text=True,
                           timeout=120, env=env)  # fmt: skip
    assert json.loads(plain.stdout)["switches"] == {}
    env["LLMRT_VULKAN_KERNELS"] = "gpu"
    env["LLMRT_CUDA_SAFE"] = "0"  # its default: not reported
    set_ = subprocess.run([LLMRT, "devices"], capture_output=True, text=True, timeout=120, env=env)
    assert "switches not at their default: LLMRT_VULKAN_KERNELS=gpu" in set_.stdout
    assert "LLMRT_CUDA_SAFE" not in set_.stdout
