"""``llmrt pull``: fetch a known model into the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from llmrt import pull as models


def pull(
    name: Annotated[str, typer.Argument(help="A known model name.")] = models.DEFAULT_MODEL,
    list_: Annotated[bool, typer.Option("--list", help="List the known models.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Download again.")] = False,
) -> None:
    """Fetch a known model once into the user cache and print its path."""
    if list_:
        for m in models.MODELS.values():
            cached = models.cached_path(m.name)
            state = f"cached at {cached}" if cached else "not pulled"
            typer.echo(f"{m.name:14s} {m.description} ({state})")
        return
    typer.echo(str(models.pull(name, force=force)))


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
