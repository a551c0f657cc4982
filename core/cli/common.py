"""Options and helpers shared by the commands."""

from __future__ import annotations

from typing import Annotated

import typer

DEVICE_HELP = (
    "Device to run on: auto (the best available), a backend name (cpu, cuda, vulkan, opencl) "
    "or NAME:INDEX such as cuda:0 or vulkan:1. `llmrt devices` lists them."
)
DeviceOption = Annotated[str, typer.Option("--device", "-dev", help=DEVICE_HELP)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
