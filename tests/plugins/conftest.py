"""Fixtures the backend plugin tests share."""

from __future__ import annotations

import pytest

from llmrt.device import registry


def first_device(backend: str):
    """The backend's first device, or the test skipped where it has none."""
    entry = registry().entry(backend)
    if entry is None or not entry.probe.available or not entry.devices:
        pytest.skip(f"no {backend} device")
    return entry.devices[0]


@pytest.fixture(scope="module")
def opencl():
    """The first OpenCL device (PoCL here and in CI, NVIDIA's driver on the GPU machine)."""
    return first_device("opencl")


@pytest.fixture(scope="module")
def vulkan():
    """The first Vulkan device (lavapipe here and in CI, NVIDIA's driver on the GPU machine)."""
    return first_device("vulkan")
