"""Plugins built and pip-installed as real distributions are found through the entry point group
alone; a broken one (failing import, raising hook, raising probe, raising info(), a name taken by
a built-in backend) is reported in one line while every other device keeps working.

The distributions go into a directory of their own, on PYTHONPATH for the `llmrt` processes the
tests start only: the environment that other test runs share never sees them."""

from __future__ import annotations

import json
import os
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

HOOK_RAISES = """
from llmrt import hookimpl


@hookimpl
def register_backends(register):
    raise RuntimeError("acme firmware table corrupt")
"""

PROBE_RAISES = """
from llmrt import Backend, Probe, hookimpl


class FlakyBackend(Backend):
    name = "acmeflaky"

    def probe(self):
        raise OSError("libacme.so.2: cannot open shared object file")

    def devices(self):
        return []


@hookimpl
def register_backends(register):
    register(FlakyBackend())
"""

INFO_RAISES = """
from llmrt import Backend, Device, Probe, hookimpl


class MuteDevice(Device):
    def info(self):
        raise RuntimeError("acme driver lost the device")


class MuteBackend(Backend):
    name = "acmemute"

    def probe(self):
        return Probe(True)

    def devices(self):
        return [MuteDevice(self, 0)]


@hookimpl
def register_backends(register):
    register(MuteBackend())
"""

TAKES_CPU = """
from llmrt import Backend, Device, DeviceInfo, DeviceType, Probe, hookimpl


class OtherCpuDevice(Device):
    def info(self):
        return DeviceInfo("another CPU backend", DeviceType.CPU)


class OtherCpuBackend(Backend):
    name = "cpu"

    def probe(self):
        return Probe(True)

    def devices(self):
        return [OtherCpuDevice(self, 0)]


@hookimpl
def register_backends(register):
    register(OtherCpuBackend())
"""

# distribution -> (module, entry point name, code)
DISTS = {
    "llmrt-acme-npu": ("llmrt_acme_npu", "acmenpu", GOOD),
    "llmrt-acme-broken": ("llmrt_acme_broken", "acmebroken", BROKEN),
    "llmrt-acme-hook": ("llmrt_acme_hook", "acmehook", HOOK_RAISES),
    "llmrt-acme-flaky": ("llmrt_acme_flaky", "acmeflaky", PROBE_RAISES),
}


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


def install(root: Path, dists: dict[str, tuple[str, str, str]]) -> dict[str, str]:
    """Build and install `dists` into root/site; the environment for processes that see them."""
    site = root / "site"
    for dist, (module, entry, code) in dists.items():
        path = make_dist(root, dist, module, entry, code)
        pip("install", "--no-deps", "--no-build-isolation", "--target", str(site), str(path))
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return install(tmp_path_factory.mktemp("plugins"), DISTS)


def llmrt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMRT, *args], capture_output=True, text=True, timeout=120, env=env)


def llmrt_json(env: dict[str, str], *args: str) -> dict:
    result = llmrt(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def broken(doc: dict, plugin: str) -> dict:
    (found,) = [b for b in doc["broken_plugins"] if b["plugin"] == plugin]
    return found


def others_work(doc: dict) -> None:
    ids = {d["id"] for d in doc["devices"]}
    assert {"cpu:0", "vulkan:0", "opencl:0", "acmenpu:0", "acmenpu:1"} <= ids, ids


def test_installed_backend_shows_in_devices(env):
    doc = llmrt_json(env, "devices")
    npus = [d for d in doc["devices"] if d["backend"] == "acmenpu"]
    assert [d["id"] for d in npus] == ["acmenpu:0", "acmenpu:1"]
    assert npus[0]["type"] == "accel" and npus[0]["properties"] == {"tops": 42}
    (entry,) = [b for b in doc["backends"] if b["name"] == "acmenpu"]
    assert entry["plugin"] == "acmenpu" and entry["details"] == {"firmware": "1.2"}
    others_work(doc)
    assert llmrt_json(env, "devices", "--device", "acmenpu:1")["devices"][0]["id"] == "acmenpu:1"


def test_installed_plugin_shows_in_plugins(env):
    doc = llmrt_json(env, "plugins")
    (npu,) = [p for p in doc["plugins"] if p["name"] == "acmenpu"]
    assert npu == {
        "name": "acmenpu",
        "version": "0.3.1",
        "distribution": "llmrt-acme-npu",
        "module": "llmrt_acme_npu",
        "hooks": ["register_backends"],
    }
    (failed,) = [b for b in doc["broken"] if b["plugin"] == "acmebroken"]
    assert "ImportError: libacme_broken.so" in failed["error"]
    assert {"cpu", "cuda", "vulkan", "opencl"} <= {p["name"] for p in doc["plugins"]}


def test_a_plugin_that_fails_to_import_is_one_line(env):
    doc = llmrt_json(env, "devices")
    failed = broken(doc, "acmebroken")
    assert failed["stage"] == "import"
    assert failed["error"] == "ImportError: libacme_broken.so: cannot open shared object file"
    others_work(doc)


def test_a_hook_that_raises_is_one_line(env):
    doc = llmrt_json(env, "devices")
    failed = broken(doc, "acmehook")
    assert failed["stage"] == "register_backends"
    assert failed["error"] == "RuntimeError: acme firmware table corrupt"
    others_work(doc)


def test_a_probe_that_raises_is_one_line_and_run_says_why(env):
    doc = llmrt_json(env, "devices")
    (entry,) = [b for b in doc["backends"] if b["name"] == "acmeflaky"]
    assert not entry["available"]
    assert entry["reason"] == "probe raised OSError: libacme.so.2: cannot open shared object file"
    others_work(doc)
    result = llmrt(env, "run", "--device", "acmeflaky", "-p", "hi", "-n", "1")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("llmrt: error: device 'acmeflaky' is unavailable: probe raised OSError")


def test_a_device_whose_info_raises_is_listed_as_broken(env, tmp_path):
    mute = {"llmrt-acme-mute": ("llmrt_acme_mute", "acmemute", INFO_RAISES)}
    env = {
        **env,
        "PYTHONPATH": install(tmp_path, mute)["PYTHONPATH"] + os.pathsep + env["PYTHONPATH"],
    }
    doc = llmrt_json(env, "devices")
    others_work(doc)
    assert "RuntimeError: acme driver lost the device" in json.dumps(doc)


def test_run_on_a_broken_plugin_says_the_plugin_is_broken_and_why(env):
    result = llmrt(env, "run", "--device", "acmebroken", "-p", "hi", "-n", "1")
    assert result.returncode != 0
    assert "acmebroken" in result.stderr and "libacme_broken.so" in result.stderr


def test_a_backend_name_taken_twice_names_both_distributions(tmp_path):
    env = install(tmp_path, {"llmrt-acme-cpu": ("llmrt_acme_cpu", "acmecpu", TAKES_CPU)})
    doc = llmrt_json(env, "devices")
    errors = " ".join(b["error"] for b in doc["broken_plugins"])
    assert "llmrt-acme-cpu" in errors and "llmrt 0.1.0" in errors, errors
    # the built-in cpu backend keeps its name: the host still computes
    assert "the built-in one is used" in errors
    cpu = next(d for d in doc["devices"] if d["id"] == "cpu:0")
    assert cpu["name"] != "another CPU backend" and cpu["computes"]


def test_plugins_verbose_shows_the_traceback_behind_a_failure(env):
    result = llmrt(env, "plugins", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "broken: acmebroken (import): ImportError: libacme_broken.so" in result.stdout
    assert "Traceback (most recent call last)" in result.stdout
    assert "Traceback" not in llmrt(env, "plugins").stdout
