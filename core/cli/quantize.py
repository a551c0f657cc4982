"""``llmrt quantize``: a GGUF file to another type, with llama-quantize's names and mixes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llmrt.cli.common import ThreadsOption, check_common
from llmrt.errors import UsageError

Opt = typer.Option


def _tensor_type(flag: str, name: str | None):
    from llmrt.gguf import GGMLType

    if name is None:
        return None
    try:
        return GGMLType[name.upper()]
    except KeyError:
        raise UsageError(f'error while handling argument "{flag}": unknown type {name}') from None


def quantize(
    source: Annotated[Path, typer.Argument(help="The GGUF file to quantize (F16, BF16 or F32).")],
    target: Annotated[Path, typer.Argument(help="The GGUF file to write.")],
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Q4_K_M, Q8_0, Q4_0, ...")],
    allow_requantize: Annotated[
        bool, Opt("--allow-requantize", help="Quantize tensors that are already quantized.")
    ] = False,
    pure: Annotated[bool, Opt("--pure", help="Every tensor in TYPE: no mix.")] = False,
    output_tensor_type: Annotated[
        str | None, Opt("--output-tensor-type", help="Type of output.weight.")
    ] = None,
    token_embedding_type: Annotated[
        str | None, Opt("--token-embedding-type", help="Type of token_embd.weight.")
    ] = None,
    threads: ThreadsOption = 0,
) -> None:
    """Quantize a model as llama-quantize does (its type names and mixes, no importance matrix)."""
    from rich.progress import Progress

    from llmrt.quantize import FTYPES, Options, quantize_file

    ftype = type_.upper()
    if ftype not in FTYPES:
        raise UsageError(f"unknown type {type_}; llmrt quantize takes {', '.join(FTYPES)}")
    if source.resolve() == target.resolve():
        raise UsageError("the output would overwrite the input: give another file name")
    check_common(threads=threads)
    opts = Options(ftype, pure, allow_requantize,
                   _tensor_type("--output-tensor-type", output_tensor_type),
                   _tensor_type("--token-embedding-type", token_embedding_type),
                   threads if threads > 0 else None)  # fmt: skip
    t0 = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task("quantizing", total=None)

        def progress(name, old, new, done, total) -> None:
            bar.update(task, completed=done, total=total, description=f"{name} {new.name}")

        path = quantize_file(source, target, opts, progress)
    size = path.stat().st_size / 2**20
    print(f"llmrt: wrote {path} ({ftype}, {size:.1f} MiB) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
