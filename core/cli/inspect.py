"""`llmrt inspect FILE [--json]`: what a GGUF file holds, without reading its weights.

Arrays longer than `ARRAY_PREVIEW` items (the vocabulary, merges, scores) are summarized in both
views as their item type, length and first items: `{"type": "ARRAY[STRING]", "length": 49152,
"first": [...]}` in JSON, `ARRAY[STRING] × 49152: ['<|endoftext|>', ...]` in the table. Shorter
arrays are shown whole.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
import typer

from llmrt.cli.common import JsonOption
from llmrt.gguf import GGUFReader, GGUFValueType, Keys
from llmrt.gguf.constants import FILE_TYPES

ARRAY_PREVIEW = 16  # arrays longer than this are summarized
FIRST_ITEMS = 5  # items shown of a summarized array
LONG_STRING = 120  # strings longer than this are cut in the table view (not in JSON)


def _type_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        item = spec[1]
        inner = "ARRAY" if isinstance(item, tuple) else GGUFValueType(item).name
        return f"ARRAY[{inner}]"
    return GGUFValueType(spec).name


def _plain(value: Any) -> Any:
    """A JSON-able copy of a metadata value (arrays summarized when long)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def summarize(value: Any, spec: Any) -> Any:
    if isinstance(spec, tuple) and len(value) > ARRAY_PREVIEW:
        first = value[:FIRST_ITEMS]
        return {"type": _type_name(spec), "length": len(value), "first": _plain(first)}
    return _plain(value)


def summary(r: GGUFReader) -> dict[str, Any]:
    """The facts a user looks for first, from well-known keys (None when absent)."""
    arch = r.get(Keys.ARCHITECTURE)
    ftype = r.get(Keys.FILE_TYPE)
    tokens = r.get(Keys.TOKENS)
    return {
        "architecture": arch,
        "name": r.get(Keys.NAME),
        "parameters": sum(t.n_elements for t in r.tensors),
        "file_type": FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
        "context_length": r.get(Keys.CONTEXT_LENGTH.format(arch=arch)) if arch else None,
        "tokenizer_model": r.get(Keys.TOKENIZER_MODEL),
        "tokenizer_pre": r.get(Keys.TOKENIZER_PRE),
        "vocab_size": len(tokens) if tokens is not None else None,
        "chat_template": Keys.CHAT_TEMPLATE in r.metadata,
        "gguf_version": r.version,
        "alignment": r.alignment,
        "tensor_count": len(r.tensors),
        "file_size": r.file_size,
    }


def report(r: GGUFReader) -> dict[str, Any]:
    return {
        "file": str(r.path),
        "summary": summary(r),
        "metadata": {
            k: {"type": _type_name(r.metadata_types[k]), "value": summarize(v, r.metadata_types[k])}
            for k, v in r.metadata.items()
        },
        "tensors": [
            {
                "name": t.name,
                "type": t.type.name,
                "shape": list(t.shape),
                "bytes": t.nbytes,
                "offset": t.offset,
            }
            for t in r.tensors
        ],
    }


def _human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "length" in value:
        first = ", ".join(repr(v) for v in value["first"])
        return f"{value['type']} × {value['length']}: [{first}, …]"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= LONG_STRING else text[:LONG_STRING] + f"… ({len(text)} chars)"


def print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = data["summary"]
    head = Table(title=data["file"], show_header=False)
    head.add_column(style="bold")
    head.add_column()
    rows = dict(s)
    rows["parameters"] = f"{_human_count(s['parameters'])} ({s['parameters']:,})"
    rows["chat_template"] = "yes" if s["chat_template"] else "no"
    rows["file_size"] = f"{s['file_size']:,} bytes"
    for k, v in rows.items():
        head.add_row(k.replace("_", " "), "-" if v is None else str(v))
    console.print(head)

    meta = Table(title=f"metadata ({len(data['metadata'])} keys)")
    for col in ("key", "type", "value"):
        meta.add_column(col, overflow="fold")
    for k, entry in data["metadata"].items():
        meta.add_row(k, entry["type"], _cell(entry["value"]))
    console.print(meta)

    tensors = Table(title=f"tensors ({len(data['tensors'])})")
    for col in ("name", "type", "shape", "bytes"):
        tensors.add_column(col, justify="right" if col == "bytes" else "left")
    for t in data["tensors"]:
        shape = "×".join(str(d) for d in t["shape"])
        tensors.add_row(t["name"], t["type"], shape, f"{t['bytes']:,}")
    console.print(tensors)


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_command(
        file: Annotated[str, typer.Argument(help="A GGUF file or known model name.")],
        json_: JsonOption = False,
    ) -> None:
        """Show a GGUF file's model facts, metadata and tensors (reads no weights)."""
        from llmrt.pull import resolve

        data = report(GGUFReader(resolve(file)))
        if json_:
            typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print_tables(data)
