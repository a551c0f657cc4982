"""The backend conformance suite: op cases run on a device and compared with the numpy reference.

Any backend plugin, ours or a third party's, runs it unchanged:

    from llmrt.testing import cases, check_case
    for case in cases():
        check_case(device, case)        # raises AssertionError with the case id and the error

Cases are op × weight type × shape, odd sizes and non-contiguous views included, with ggml's
test-backend-ops metric (normalized mean squared error) and thresholds. A device that declines a
node in `supports_op` is not failed: `check_case` returns "unsupported".

As a pytest plugin (llmrt.testing.pytest_plugin, installed as the `pytest11` entry point `llmrt`),
`pytest --llmrt-device mycpu:0` runs all of it on a device, with greedy runs of a tiny random
model (`write_tiny_llama`) and of a real one against the reference (`check_greedy`,
`ReferenceDevice`); docs/plugins/testing.md says how.

`NullDevice` (llmrt.testing.null) computes nothing and records what it is given, for placement
and planning tests; `DecliningDevice` declines chosen ops and computes the rest on the host.
"""

from llmrt.testing.conformance import OpCase, WeightData, cases, check_case, nmse
from llmrt.testing.models import ReferenceDevice, check_greedy
from llmrt.testing.null import DecliningDevice, NullBackend, NullDevice
from llmrt.testing.tiny import write_tiny_llama

__all__ = [
    "DecliningDevice", "NullBackend", "NullDevice", "OpCase", "ReferenceDevice", "WeightData",
    "cases", "check_case", "check_greedy", "nmse", "write_tiny_llama",
]  # fmt: skip
