"""Fixtures the backend plugin tests share."""

from __future__ import annotations

import pytest

from llmrt.device import registry


@pytest.fixture(scope="module")
def opencl():
    """The first OpenCL device (PoCL here and in CI, NVIDIA's driver on the GPU machine)."""
    entry = registry().entry("opencl")
    if entry is None or not entry.probe.available or not entry.devices:
        pytest.skip("no OpenCL device")
    return entry.devices[0]
