"""Run an llmrt command with some of a backend's module constants set first (launch choices
compared in one process without editing the code):

    python benchmarks/with_constants.py llmrt_opencl.launch_weights.MMVQ_UNROLL=2 -- bench -m M ...

Each NAME=VALUE before `--` is `module.CONSTANT=int`; what follows `--` is llmrt's command line,
or pytest's where it starts with `pytest` (the tests under those launch choices).
"""

from __future__ import annotations

import importlib
import sys

from llmrt.cli import main

if __name__ == "__main__":
    split = sys.argv.index("--")
    for item in sys.argv[1:split]:
        name, value = item.split("=", 1)
        module, constant = name.rsplit(".", 1)
        setattr(importlib.import_module(module), constant, int(value))
    command = sys.argv[split + 1 :]
    if command[:1] == ["pytest"]:
        import pytest

        sys.exit(pytest.main(command[1:]))
    sys.argv = ["llmrt", *command]
    sys.exit(main())
