"""The ``llmrt`` command line: a typer app, one module per command group.

Errors a user can fix (``LlmrtError``, bad flags) end as one line on stderr with a non-zero exit
code (2 for usage errors), never a traceback. ``LLMRT_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

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
COMMANDS = ("run", "bench", "pull", "devices", "plugins", "inspect", "tokenize", "serve")


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # Bad flags are handled by typer itself: a short usage message and exit code 2.
    try:
        build_app()(args=argv, prog_name="llmrt")
    except LlmrtError as exc:
        if os.environ.get("LLMRT_DEBUG"):
            raise
        print(f"llmrt: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
