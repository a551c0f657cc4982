"""``llmrt plugins``: what was loaded from the ``llmrt`` entry-point group, and what broke."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from llmrt.cli.common import JsonOption, VerboseOption
from llmrt.device import registry
from llmrt.plugins import get_plugins


def report() -> dict[str, Any]:
    registry()  # running the backend hooks records any plugin whose hook raises
    plugins = get_plugins()
    return {
        "plugins": [
            {
                "name": p.name,
                "version": p.version,
                "distribution": p.distribution,
                "module": p.module,
                "hooks": plugins.hooks_of(p.name),
            }
            for p in plugins.loaded.values()
        ],
        # the keys of `llmrt devices --json`'s broken_plugins
        "broken": [
            {"plugin": f.plugin, "stage": f.stage, "error": f.error, "detail": f.detail}
            for f in plugins.failures
        ],
    }


def plugins(json_output: JsonOption = False, verbose: VerboseOption = False) -> None:
    """List loaded plugins (name, version, distribution, hooks) and broken ones with their error
    (--verbose: the traceback behind it)."""
    doc = report()
    if json_output:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console()
    table = Table(title="Plugins", title_justify="left")
    for column in ("name", "version", "distribution", "module", "hooks"):
        table.add_column(column)
    for p in doc["plugins"]:
        table.add_row(p["name"], p["version"] or "", p["distribution"] or "", p["module"],
                      ", ".join(p["hooks"]))  # fmt: skip
    console.print(table)
    for b in doc["broken"]:
        console.print(f"broken: {b['plugin']} ({b['stage']}): {b['error']}", markup=False)
        if verbose and b["detail"]:
            console.print(b["detail"].rstrip(), markup=False)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
