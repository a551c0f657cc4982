"""A plugin built and pip-installed as a real distribution is found through the entry point group
alone; a plugin that fails to import is listed as broken while everything else keeps working."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LLMRT = shutil.which("llmrt") or "llmrt"

GOOD = """
from llmrt import Backend, Device, DeviceInfo, DeviceType, Probe, hookimpl


class NpuDevice(Device):
    def info(self):
        return DeviceInfo("Acme NPU", DeviceType.ACCEL, 2**30, 2**29, {"tops": 42}, "42 TOPS")


class NpuBackend(Backend):
    name = "acmenpu"
    priority = 40

    def probe(self):
        return Probe(True, details={"firmware": "1.2"})

    def devices(self):
        return [NpuDevice(self, 0), NpuDevice(self, 1)]


@hookimpl
def register_backends(register):
    register(NpuBackend())
"""

BROKEN = """
raise ImportError("libacme_broken.so: cannot open shared object file")
"""


def make_dist(root: Path, dist: str, module: str, entry: str, code: str) -> Path:
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(textwrap.dedent(code))
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.3.1"

        [project.entry-points.llmrt]
        {entry} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
        """)
    )
    return src


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    dists = {
        "llmrt-acme-npu": make_dist(root, "llmrt-acme-npu", "llmrt_acme_npu", "acmenpu", GOOD),
        "llmrt-acme-broken": make_dist(
            root, "llmrt-acme-broken", "llmrt_acme_broken", "acmebroken", BROKEN
        ),
    }
    for path in dists.values():
        pip("install", "--no-deps", "--no-build-isolation", str(path))
    yield
    pip("uninstall", "-y", *dists)


def llmrt_json(*args: str) -> dict:
    result = subprocess.run([LLMRT, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_installed_backend_shows_in_devices(installed):
    doc = llmrt_json("devices")
    npus = [d for d in doc["devices"] if d["backend"] == "acmenpu"]
    assert [d["id"] for d in npus] == ["acmenpu:0", "acmenpu:1"]
    assert npus[0]["type"] == "accel" and npus[0]["properties"] == {"tops": 42}
    (entry,) = [b for b in doc["backends"] if b["name"] == "acmenpu"]
    assert entry["plugin"] == "acmenpu" and entry["details"] == {"firmware": "1.2"}
    # the broken plugin is reported, and every built-in backend still works
    (broken,) = doc["broken_plugins"]
    assert broken["plugin"] == "acmebroken" and broken["stage"] == "import"
    assert "libacme_broken.so" in broken["error"]
    ids = {d["id"] for d in doc["devices"]}
    assert {"cpu:0", "vulkan:0", "opencl:0"} <= ids
    assert llmrt_json("devices", "--device", "acmenpu:1")["devices"][0]["id"] == "acmenpu:1"


def test_installed_plugin_shows_in_plugins(installed):
    doc = llmrt_json("plugins")
    (npu,) = [p for p in doc["plugins"] if p["name"] == "acmenpu"]
    assert npu == {
        "name": "acmenpu",
        "version": "0.3.1",
        "distribution": "llmrt-acme-npu",
        "module": "llmrt_acme_npu",
        "hooks": ["register_backends"],
    }
    (broken,) = doc["broken"]
    assert broken["name"] == "acmebroken"
    assert "ImportError: libacme_broken.so" in broken["error"]
    assert {"cpu", "cuda", "vulkan", "opencl"} <= {p["name"] for p in doc["plugins"]}
