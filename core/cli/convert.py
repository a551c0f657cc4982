"""``llmrt convert``: a Hugging Face checkpoint folder to GGUF (like convert_hf_to_gguf.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmrt.errors import UsageError

Opt = typer.Option


def convert(
    folder: Annotated[Path | None, typer.Argument(help="The checkpoint folder.")] = None,
    model: Annotated[Path | None, Opt("--model", help="The checkpoint folder (as -m).")] = None,
    outfile: Annotated[Path | None, Opt("--outfile", help="The GGUF file to write.")] = None,
    outtype: Annotated[str, Opt("--outtype", help="f32, f16, bf16, q8_0 or auto.")] = "auto",
    vocab_only: Annotated[bool, Opt("--vocab-only", help="Write the vocabulary only.")] = False,
    split_max_size: Annotated[
        str | None, Opt("--split-max-size", help="Split into files of at most N bytes (500M, 2G).")
    ] = None,
) -> None:
    """Convert a Hugging Face checkpoint (config.json, safetensors, tokenizer.json) to GGUF."""
    from rich.progress import Progress

    from llmrt.convert import OUTTYPES
    from llmrt.convert import convert as run_convert

    source = folder or model
    if source is None:
        raise UsageError("give the checkpoint folder: llmrt convert HF_DIR --outfile OUT.gguf")
    if outtype not in (*OUTTYPES, "auto"):
        raise UsageError(f"--outtype takes {', '.join(OUTTYPES)} or auto, not {outtype}")
    max_size = None
    if split_max_size is not None:
        from llmrt.gguf.split import parse_size

        try:
            max_size = parse_size(split_max_size)
        except ValueError as exc:
            raise UsageError(f'error while handling argument "--split-max-size": {exc}') from None
    target = outfile or Path(source) / f"{Path(source).resolve().name}-{outtype}.gguf"
    with Progress(transient=True, console=None) as bar:
        task = bar.add_task("converting", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=name)

        path = run_convert(source, target, outtype, vocab_only, progress, max_size)
    print(f"llmrt: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
