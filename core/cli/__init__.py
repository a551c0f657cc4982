"""The ``llmrt`` command line: a typer app, one module per command group.

Errors a user can fix (``LlmrtError``, bad flags) end as one line on stderr with a non-zero exit
code (2 for usage errors), never a traceback. Any other exception is a bug, and still one line
(its type and message); ``--verbose`` (or ``LLMRT_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from llmrt.errors import LlmrtError

app = typer.Typer(
    name="llmrt",
    help="Run large language models stored as GGUF files, on any hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Each module defines register(app) and adds its commands.
COMMANDS = (
    "run", "bench", "perplexity", "convert", "quantize", "pull", "devices", "plugins", "inspect",
    "tokenize", "serve",
)  # fmt: skip


def build_app() -> typer.Typer:
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"llmrt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"llmrt.cli.{name}":
                raise
            continue  # a command whose module has not landed yet
        module.register(app)
    from llmrt.plugins import get_plugins

    get_plugins().call("register_commands", app=app)
    return app


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks and details on stderr."),
) -> None:
    """Run large language models stored as GGUF files, on any hardware."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: no exception leaves it as a traceback unless asked for."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or bool(os.environ.get("LLMRT_DEBUG"))
    # Bad flags are handled by typer itself: a short usage message and exit code 2.
    try:
        build_app()(args=args, prog_name="llmrt")
    except LlmrtError as exc:
        if verbose:
            traceback.print_exc()
        print(f"llmrt: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except MemoryError as exc:
        if verbose:
            traceback.print_exc()
        what = str(exc) or "an allocation failed"
        print(f"llmrt: error: out of host memory: {what}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (--verbose shows where)"
        print(f"llmrt: error: {type(exc).__name__}: {exc}; this is a bug{hint}", file=sys.stderr)
        sys.exit(1)
