"""``llmrt devices``: what can run here, what cannot and why."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import llmrt
from llmrt.cli.common import DeviceOption, JsonOption
from llmrt.device import Device, Registry, registry, switches_set
from llmrt.plugins import get_plugins

SCHEMA_VERSION = 1


def device_record(device: Device) -> dict[str, Any]:
    try:
        info = device.info()
    except Exception as exc:  # a plugin's driver failing: this device is listed as broken
        why = f"info() raised {type(exc).__name__}: {exc}"
        return {
            "id": device.id, "backend": device.backend.name, "index": device.index,
            "name": "?", "type": "unknown", "memory_total": None, "memory_free": None,
            "summary": why, "properties": {}, "computes": False, "computes_not_why": why,
        }  # fmt: skip
    return {
        "id": device.id,
        "backend": device.backend.name,
        "index": device.index,
        "name": info.name,
        "type": info.type.value,
        "memory_total": info.memory_total,
        "memory_free": info.memory_free,
        "summary": info.summary,
        "properties": dict(info.properties),
        "computes": not device.smoke,
        "computes_not_why": device.smoke,
    }


def report(reg: Registry, only: Device | None = None) -> dict[str, Any]:
    """The document ``llmrt devices --json`` prints; docs/devices-json.md is its schema."""
    devices = [only] if only else reg.devices
    return {
        "schema_version": SCHEMA_VERSION,
        "llmrt_version": llmrt.__version__,
        "auto": _auto(reg),
        "devices": [device_record(d) for d in devices],
        "backends": [
            {
                "name": e.backend.name,
                "plugin": e.plugin,
                "priority": e.backend.priority,
                "available": e.probe.available,
                "reason": e.probe.reason,
                "fix": e.probe.fix,
                "details": dict(e.probe.details),
                "devices": [d.id for d in e.devices],
            }
            for e in reg.entries
        ],
        "switches": switches_set(),
        "broken_plugins": [
            {"plugin": f.plugin, "stage": f.stage, "error": f.error} for f in get_plugins().failures
        ],
    }


def _auto(reg: Registry) -> str | None:
    """What --device auto takes: the first device that computes."""
    try:
        return reg.best().id
    except Exception:  # no device at all
        return None


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def _print_table(doc: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="Devices (best first; --device auto takes the first that computes)",
                  title_justify="left")  # fmt: skip
    for column in ("device", "name", "type", "GiB free/total", "computes", "details"):
        table.add_column(column)
    for d in doc["devices"]:
        memory = f"{_gib(d['memory_free'])} / {_gib(d['memory_total'])}"
        computes = "yes" if d["computes"] else f"no: {d['computes_not_why']}"
        table.add_row(d["id"], d["name"], d["type"], memory, computes, d["summary"])
    console.print(table)
    for b in doc["backends"]:
        if not b["available"]:
            fix = f" — fix: {b['fix']}" if b["fix"] else ""
            console.print(f"{b['name']}: unavailable: {b['reason']}{fix}", markup=False)
    for f in doc["broken_plugins"]:
        console.print(f"plugin {f['plugin']} is broken ({f['stage']}): {f['error']}", markup=False)
    if doc["switches"]:
        said = ", ".join(f"{k}={v}" for k, v in doc["switches"].items())
        console.print(f"switches not at their default: {said}", markup=False)


def devices(device: DeviceOption = "", json_output: JsonOption = False) -> None:
    """List the devices every backend plugin found, and why a backend is unavailable.

    --device auto picks the first available device by type (discrete GPU, integrated GPU,
    accelerator, CPU), then by backend priority (cpu first among CPUs, then cuda, vulkan, opencl).
    """
    reg = registry()
    only = reg.select(device) if device else None
    doc = report(reg, only)
    if json_output:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_table(doc)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
