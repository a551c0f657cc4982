"""The shared conformance suite on every available device (cases a device declines are skipped)."""

from __future__ import annotations

import pytest

from llmrt.device import registry
from llmrt.testing import cases, check_case

DEVICES = registry().devices
CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("device", DEVICES, ids=[d.id for d in DEVICES])
def test_op(device, case):
    if check_case(device, case) == "unsupported":
        pytest.skip(f"{device.id} does not support this case")


def test_cpu_supports_every_case():
    cpu = registry().select("cpu")
    assert [c.id for c in CASES if check_case(cpu, c) == "unsupported"] == []
