"""The Vulkan backend's probe, checked against the real driver (lavapipe on dev machines and CI) and
against ``vulkaninfo``, plus the ways it reports a machine where Vulkan cannot run."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmrt.device import DeviceType, registry
from llmrt_vulkan.backend import FIX_LOADER, FIX_PACKAGE, VulkanBackend

LAVAPIPE_ICDS = "/usr/share/vulkan/icd.d/lvp_icd*.json"


def _api(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("."))


@pytest.fixture(scope="module")
def backend() -> VulkanBackend:
    backend = VulkanBackend()
    probe = backend.probe()
    if not probe.available:
        pytest.fail(f"Vulkan is unavailable: {probe.reason} ({probe.fix})")
    yield backend
    backend.close()


def test_registry_lists_lavapipe_as_cpu_device():
    # Dev machines and CI install mesa-vulkan-drivers; elsewhere (a GPU box) lavapipe is optional.
    if not glob.glob(LAVAPIPE_ICDS) and not os.environ.get("CI"):
        pytest.skip("lavapipe (mesa-vulkan-drivers) is not installed")
    entry = registry().entry("vulkan")
    assert entry is not None, "the vulkan plugin did not register its backend"
    assert entry.probe.available, f"{entry.probe.reason} ({entry.probe.fix})"
    details = entry.probe.details
    assert _api(details["loader_api_version"]) >= (1, 1)
    assert details["vulkan_package"]
    infos = [d.info() for d in entry.devices]
    llvmpipe = [i for i in infos if i.name.startswith("llvmpipe")]
    assert llvmpipe, f"no llvmpipe device among {[i.name for i in infos]}"
    info = llvmpipe[0]
    props = info.properties
    assert info.type is DeviceType.CPU
    assert props["device_type"] == "cpu"
    assert _api(props["api_version"]) >= (1, 1)
    assert props["subgroup_size"] > 0
    assert "compute" in props["subgroup_stages"]
    assert "basic" in props["subgroup_operations"]
    assert props["memory_heaps"] and all(h["size"] > 0 for h in props["memory_heaps"])
    assert info.memory_total == max(h["size"] for h in props["memory_heaps"] if h["device_local"])
    assert props["driver_name"] == "llvmpipe"
    assert props["max_compute_workgroup_invocations"] >= 128
    assert info.summary.startswith(f"Vulkan {props['api_version']}, llvmpipe Mesa ")
    json.dumps(props)  # JSON-serializable throughout


def test_devices_are_indexed_and_serializable(backend: VulkanBackend):
    devices = backend.devices()
    assert [d.index for d in devices] == list(range(len(devices)))
    assert [d.id for d in devices] == [f"vulkan:{i}" for i in range(len(devices))]
    for device in devices:
        info = device.info()
        json.dumps(info.properties)
        assert info.memory_total is None or info.memory_total > 0
        assert info.memory_free is None or 0 <= info.memory_free <= info.memory_total


def _summary_blocks(text: str) -> dict[int, dict[str, str]]:
    """``vulkaninfo --summary``'s GPU sections as {index: {field: value}}."""
    blocks: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if m := re.fullmatch(r"GPU(\d+):", line.strip()):
            current = blocks.setdefault(int(m[1]), {})
        elif current is not None and (m := re.fullmatch(r"\s+(\w+)\s*=\s*(.*)", line)):
            current[m[1]] = m[2].strip()
    return blocks


def _heaps(text: str) -> dict[int, list[dict]]:
    """The memory heaps of each GPU section of full ``vulkaninfo`` text output."""
    _, _, devices = text.partition("Device Properties and Extensions:")
    parts = re.split(r"^GPU(\d+):$", devices, flags=re.M)
    found = {}
    for index, body in zip(parts[1::2], parts[2::2], strict=True):
        heaps_text = body.split("memoryHeaps:", 1)[1].split("memoryTypes:", 1)[0]
        chunks = re.split(r"memoryHeaps\[\d+\]:", heaps_text)[1:]
        found[int(index)] = [
            {
                "size": int(re.search(r"size\s*=\s*(\d+)", c)[1]),
                "device_local": "MEMORY_HEAP_DEVICE_LOCAL_BIT" in c,
            }
            for c in chunks
        ]
    return found


def _flag(name: str, prefix: str) -> str:
    """VK_SUBGROUP_FEATURE_ROTATE_BIT_KHR -> rotate, as the backend names flags."""
    name = name.removeprefix(prefix)
    return re.sub(r"_BIT(_[A-Z]+)?$", "", name).lower()


def _run_vulkaninfo(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["vulkaninfo", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("vulkaninfo") is None, reason="vulkaninfo is not on PATH")
def test_matches_vulkaninfo(backend: VulkanBackend, tmp_path: Path):
    summary = _summary_blocks(_run_vulkaninfo("--summary"))
    heaps = _heaps(_run_vulkaninfo())
    devices = backend.devices()
    assert sorted(summary) == list(range(len(devices)))
    for device in devices:
        info = device.info()
        props = info.properties
        truth = summary[device.index]
        assert info.name == truth["deviceName"]
        assert props["api_version"] == truth["apiVersion"]
        assert props["driver_version"] == truth["driverVersion"]
        assert int(props["vendor_id"], 16) == int(truth["vendorID"], 16)
        assert int(props["device_id"], 16) == int(truth["deviceID"], 16)
        assert truth["deviceType"] == "PHYSICAL_DEVICE_TYPE_" + props["device_type"].upper()
        if "driverName" in truth:
            assert props["driver_name"] == truth["driverName"]
            assert props["driver_info"] == truth["driverInfo"]
        assert props["memory_heaps"] == heaps[device.index]

        # The profile JSON (one file per GPU) has the structs the summary leaves out.
        out = tmp_path / str(device.index)
        out.mkdir()
        _run_vulkaninfo(f"--json={device.index}", cwd=out)
        (profile,) = out.glob("*.json")
        caps = json.loads(profile.read_text())["capabilities"]["device"]
        vk_props, features = caps["properties"], caps["features"]
        limits = vk_props["VkPhysicalDeviceProperties"]["limits"]
        assert props["max_compute_workgroup_size"] == limits["maxComputeWorkGroupSize"]
        assert (
            props["max_compute_workgroup_invocations"] == limits["maxComputeWorkGroupInvocations"]
        )
        assert props["max_storage_buffer_range"] == limits["maxStorageBufferRange"]
        subgroup = vk_props["VkPhysicalDeviceSubgroupProperties"]
        assert props["subgroup_size"] == subgroup["subgroupSize"]
        assert set(props["subgroup_operations"]) == {
            _flag(f, "VK_SUBGROUP_FEATURE_") for f in subgroup["supportedOperations"]
        }
        assert set(props["subgroup_stages"]) == {
            _flag(f, "VK_SHADER_STAGE_") for f in subgroup["supportedStages"]
        }
        f16 = features.get("VkPhysicalDeviceShaderFloat16Int8Features", {})
        assert props["shader_float16"] == f16.get("shaderFloat16", False)
        assert props["shader_int8"] == f16.get("shaderInt8", False)
        s16 = features.get("VkPhysicalDevice16BitStorageFeatures", {})
        assert props["storage_buffer_16bit"] == s16.get("storageBuffer16BitAccess", False)
        assert props["cooperative_matrix"] == ("VK_KHR_cooperative_matrix" in caps["extensions"])
        size = vk_props.get("VkPhysicalDeviceSubgroupSizeControlProperties", {})
        assert props["min_subgroup_size"] == size.get("minSubgroupSize")
        assert props["max_subgroup_size"] == size.get("maxSubgroupSize")
        model = features.get("VkPhysicalDeviceVulkanMemoryModelFeatures", {})
        assert props["vulkan_memory_model"] == model.get("vulkanMemoryModel", False)


def _probe_in_child(tmp_path: Path, fake_vulkan: str) -> dict:
    """Probe in a fresh interpreter whose ``import vulkan`` finds ``fake_vulkan`` first."""
    (tmp_path / "vulkan.py").write_text(textwrap.dedent(fake_vulkan))
    code = textwrap.dedent(
        """
        import json
        from llmrt_vulkan.backend import VulkanBackend
        backend = VulkanBackend()
        probe = backend.probe()
        print(json.dumps({"available": probe.available, "reason": probe.reason,
                          "fix": probe.fix, "devices": len(backend.devices())}))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_missing_loader_is_reported_not_raised(tmp_path: Path):
    # What the real package does when dlopen("libvulkan.so.1") fails.
    message = "libvulkan.so.1: cannot open shared object file: No such file or directory"
    probe = _probe_in_child(tmp_path, f"raise OSError({message!r})")
    assert probe["available"] is False
    assert "loader" in probe["reason"] and "libvulkan.so.1" in probe["reason"]
    assert probe["fix"] == FIX_LOADER
    assert probe["devices"] == 0


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vulkan", None)  # makes `import vulkan` fail as if absent
    probe = VulkanBackend().probe()
    assert probe.available is False
    assert "not installed" in probe.reason
    assert probe.fix == FIX_PACKAGE


def test_no_driver_is_reported(tmp_path: Path):
    # Point the loader at an ICD manifest whose library does not exist: no usable driver.
    manifest = tmp_path / "missing_icd.json"
    manifest.write_text(
        json.dumps(
            {
                "file_format_version": "1.0.0",
                "ICD": {"library_path": str(tmp_path / "missing.so"), "api_version": "1.3.0"},
            }
        )
    )
    code = textwrap.dedent(
        """
        import json
        from llmrt_vulkan.backend import VulkanBackend
        probe = VulkanBackend().probe()
        print(json.dumps({"available": probe.available, "reason": probe.reason, "fix": probe.fix}))
        """
    )
    env = dict(os.environ, VK_DRIVER_FILES=str(manifest), VK_ICD_FILENAMES=str(manifest))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["available"] is False
    assert "driver" in probe["fix"] and "mesa-vulkan-drivers" in probe["fix"]


def test_importing_the_plugin_does_not_load_vulkan():
    code = "import sys, llmrt_vulkan; assert 'vulkan' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


NVIDIA = {
    "api_version": "1.4.312", "shader_float16": True, "vulkan_memory_model": True,
    "min_subgroup_size": 32, "max_subgroup_size": 32, "subgroup_size_control": True,
    "compute_full_subgroups": True, "required_subgroup_size_stages": ["compute"],
    "cooperative_matrix_shapes": ["16x16x16 f16*f16+f32=f32", "16x8x16 f16*f16+f32=f32"],
}  # fmt: skip


@pytest.mark.parametrize(
    "change, chosen",
    [
        ({}, ("matmul_coop", None)),
        # RDNA3: waves of 32 or 64, a pipeline may require 32
        ({"min_subgroup_size": 32, "max_subgroup_size": 64}, ("matmul_coop", 32)),
        (
            {"min_subgroup_size": 32, "max_subgroup_size": 64, "subgroup_size_control": False},
            (None, None),
        ),  # fmt: skip
        ({"min_subgroup_size": 64, "max_subgroup_size": 64}, (None, None)),
        # Mesa 26's lavapipe: 8x8x8 products, subgroups of 8
        (
            {
                "min_subgroup_size": 8,
                "max_subgroup_size": 8,
                "cooperative_matrix_shapes": ["8x8x8 f16*f16+f32=f32"],
            },
            ("matmul_coop8", None),
        ),  # fmt: skip
        ({"cooperative_matrix_shapes": ["16x16x16 f16*f16+f16=f16"]}, (None, None)),
        ({"cooperative_matrix_shapes": []}, (None, None)),  # Mesa 22's lavapipe
        ({"vulkan_memory_model": False}, (None, None)),
        ({"api_version": "1.2.203"}, (None, None)),
    ],
)
def test_cooperative_matrix_variant_fits_the_device(change, chosen):
    from llmrt_vulkan.runtime import _coopmat_variant

    assert _coopmat_variant({**NVIDIA, **change}) == chosen
