"""Options and helpers shared by the commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmrt.errors import UsageError

DEVICE_HELP = (
    "Device to run on: auto (the best available), a backend name (cpu, cuda, vulkan, opencl) "
    "or NAME:INDEX such as cuda:0 or vulkan:1. `llmrt devices` lists them."
)
DeviceOption = Annotated[str, typer.Option("--device", "-dev", help=DEVICE_HELP)]
TensorSplitOption = Annotated[
    str | None,
    typer.Option("-ts", "--tensor-split", help="With several --device: the share of the layers "
                 "each takes, as 3,1 (default: by free memory)."),
]  # fmt: skip
SplitModeOption = Annotated[
    str,
    typer.Option("-sm", "--split-mode", help="With several --device: layer (each takes a range "
                 "of layers), or none (the --main-gpu one alone); row is not supported."),
]  # fmt: skip
MainGpuOption = Annotated[
    int, typer.Option("-mg", "--main-gpu", help="With -sm none: which of the --device list runs.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ThreadsOption = Annotated[
    int,
    typer.Option(
        "-t",
        "--threads",
        help="CPU threads for the kernels; 0: the physical cores, decode steps on fewer when "
        "that is faster at the moment.",
    ),
]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", help="Where each layer runs; tracebacks of errors.")
]


def check_arg(flag: str, value: Any, ok: bool, meaning: str) -> None:
    """Reject a flag's nonsensical value with llama.cpp's wording and what the flag takes."""
    if not ok:
        raise UsageError(
            f'error while handling argument "{flag}": invalid value {value} ({meaning})'
        )


def check_common(
    *, n_predict: int | None = None, ctx_size: int | None = None, n_gpu_layers: int | None = None,
    batch_size: int | None = None, ubatch_size: int | None = None, threads: int | None = None,
    top_k: int | None = None,
) -> None:  # fmt: skip
    """The checks of the flags that several commands share (None: the command has no such flag)."""
    if n_predict is not None:
        check_arg("-n", n_predict, n_predict >= -2,
                  "a token count >= 0, or -1 to generate until the end of generation or a full "
                  "context")  # fmt: skip
    if ctx_size is not None:
        check_arg("-c", ctx_size, ctx_size >= 0, "a size in tokens >= 0; 0 takes the model's")
    if n_gpu_layers is not None:
        check_arg("-ngl", n_gpu_layers, n_gpu_layers >= -1,
                  "a layer count >= 0, or -1 for all of them")  # fmt: skip
    if batch_size is not None:
        check_arg("-b", batch_size, batch_size >= 1, "a token count >= 1")
    if ubatch_size is not None:
        check_arg("-ub", ubatch_size, ubatch_size >= 1, "a token count >= 1")
    if threads is not None:
        check_arg("-t", threads, threads >= -1, "a thread count >= 1; 0 or -1 takes the default")
    if top_k is not None:
        check_arg("--top-k", top_k, top_k >= 0, "a count >= 0; 0 turns top-k off")


def parse_tensor_split(text: str | None) -> list[float] | None:
    """-ts/--tensor-split "3,1" (llama-bench's "3/1" too) -> [3.0, 1.0]; None -> None."""
    if text is None:
        return None
    try:
        shares = [float(x) for x in text.replace("/", ",").split(",")]
    except ValueError:
        shares = []
    ok = bool(shares) and all(x >= 0 for x in shares) and sum(shares) > 0
    check_arg("-ts", text, ok, "proportions >= 0 separated by commas, one per device, as 3,1")
    return shares
