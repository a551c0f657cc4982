"""Run an llmrt command with some of a backend's module constants set first (launch choices
compared in one process without editing the code):

    python benchmarks/with_constants.py llmrt_opencl.launch_weights.MMVQ_LANES=32 -- bench -m M ...

Each NAME=VALUE before `--` is `module.CONSTANT=int`; what follows `--` is llmrt's command line,
or pytest's where it starts with `pytest` (the tests under those launch choices).
"""

from __future__ import annotations

import importlib
import sys

from llmrt.cli import main


def set_constants(items: list[str]) -> None:
    """Each `module.CONSTANT=int` set on its (imported) module."""
    for item in items:
        name, value = item.split("=", 1)
        module, constant = name.rsplit(".", 1)
        setattr(importlib.import_module(module), constant, int(value))


if __name__ == "__main__":
    split = sys.argv.index("--")
    set_constants(sys.argv[1:split])
    command = sys.argv[split + 1 :]
    if command[:1] == ["pytest"]:
        import pytest

        sys.exit(pytest.main(command[1:]))
    sys.argv = ["llmrt", *command]
    sys.exit(main())
