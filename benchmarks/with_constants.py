"""Run an llmrt command with some of a backend's module constants set first (launch choices
compared in one process without editing the code):

    python benchmarks/with_constants.py llmrt_opencl.launch_weights.MMVQ_LANES=32 -- bench -m M ...

Each NAME=VALUE before `--` is `module.CONSTANT=int`, or `LIMIT.key=int`: that entry of the
first OpenCL device's limits (`LIMIT.cpu=0` runs a GPU's kernels on PoCL, `LIMIT.max_alloc=N` a
driver's largest buffer); what follows `--` is llmrt's command line, or pytest's where it starts
with `pytest` (the tests under those launch choices).
"""

from __future__ import annotations

import importlib
import sys

from llmrt.cli import main


def set_constants(items: list[str], device: str = "opencl:0") -> None:
    """Each `module.CONSTANT=int` set on its (imported) module, each `LIMIT.key=int` in
    `device`'s limits."""
    for item in items:
        name, value = item.split("=", 1)
        if name.startswith("LIMIT."):
            from llmrt.device import registry

            registry().select(device).limits[name[len("LIMIT.") :]] = int(value)
            continue
        module, constant = name.rsplit(".", 1)
        found = importlib.import_module(module)
        if not hasattr(found, constant):  # a constant since deleted: say so, measure nothing
            raise SystemExit(f"with_constants: {module} has no {constant}")
        setattr(found, constant, int(value))


if __name__ == "__main__":
    split = sys.argv.index("--")
    set_constants(sys.argv[1:split])
    command = sys.argv[split + 1 :]
    if command[:1] == ["pytest"]:
        import pytest

        sys.exit(pytest.main(command[1:]))
    sys.argv = ["llmrt", *command]
    sys.exit(main())
