"""`llmrt tokenize -m MODEL -p TEXT`: token ids and pieces, printed like llama.cpp's llama-tokenize.

Like llama-tokenize, special tokens written in the text are parsed (``--no-parse-special`` turns
that off), BOS is added when the model asks for it (``--no-bos``), and each line shows the id and
the token's raw bytes: ``   id -> 'piece'``. Only the tokenizer metadata of the GGUF is read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmrt.errors import UsageError


def tokenize(
    model: Annotated[
        str | None,
        typer.Option(
            "-m", "--model", help="GGUF file or known model name; default: the default model."
        ),
    ] = None,
    prompt: Annotated[str | None, typer.Option("-p", "--prompt", help="Text to tokenize.")] = None,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read the text from a file.")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the text from standard input.")
    ] = False,
    ids: Annotated[
        bool, typer.Option("--ids", help="Print only the ids, as a Python list.")
    ] = False,
    no_bos: Annotated[
        bool, typer.Option("--no-bos", help="Do not add BOS even where the model asks for it.")
    ] = False,
    no_parse_special: Annotated[
        bool,
        typer.Option("--no-parse-special", help="Treat special-token text as plain text."),
    ] = False,
    show_count: Annotated[
        bool, typer.Option("--show-count", help="Print the number of tokens at the end.")
    ] = False,
) -> None:
    """Tokenize text with a model's tokenizer (like llama-tokenize)."""
    sources = [s for s in (prompt is not None, file is not None, stdin) if s]
    if len(sources) != 1:
        raise UsageError("give exactly one of -p TEXT, -f FILE or --stdin")
    if file is not None:
        try:
            text = file.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    elif stdin:
        text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    else:
        text = prompt or ""

    from llmrt.pull import resolve
    from llmrt.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(resolve(model))
    tokens = tok.encode(text, add_special=not no_bos, parse_special=not no_parse_special)
    if ids:
        typer.echo("[" + ", ".join(str(t) for t in tokens) + "]")
    else:
        # raw bytes, as llama-tokenize prints them: a piece may be part of a UTF-8 character
        out = b"".join(b"%6d -> '%s'\n" % (t, tok.token_to_piece(t)) for t in tokens)
        typer.echo(out, nl=False)
    if show_count:
        typer.echo(f"Total number of tokens: {len(tokens)}")


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize)
