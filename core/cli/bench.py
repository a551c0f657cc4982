"""``llmrt bench``: llama-bench's tests and table (prompt processing ppN, text generation tgN)."""

from __future__ import annotations

import json
import statistics
import time
from typing import Annotated, Any

import numpy as np
import typer

from llmrt.cli.common import (
    DeviceOption,
    MainGpuOption,
    SplitModeOption,
    TensorSplitOption,
    ThreadsOption,
    VerboseOption,
    check_arg,
    check_common,
    parse_tensor_split,
)
from llmrt.device import switches_set
from llmrt.gguf.constants import FILE_TYPES

Opt = typer.Option


def describe(model: Any) -> str:
    """llama-bench's model column: architecture, size label, file type (general.file_type)."""
    md = model.metadata
    label = md.get("general.size_label")
    if not label:
        n = model.n_params
        label = f"{n / 1e9:.0f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    ftype = md.get("general.file_type")
    if isinstance(ftype, int) and ftype in FILE_TYPES:  # MOSTLY_Q4_K_M -> Q4_K_M
        ftype = FILE_TYPES[ftype].removeprefix("MOSTLY_").removeprefix("ALL_")
    else:  # no file type recorded: the type that holds most of the matrices' bytes
        types: dict[str, int] = {}
        for t in model.reader.tensors:
            if len(t.shape) == 2:
                types[t.type.name] = types.get(t.type.name, 0) + t.nbytes
        ftype = max(types, key=types.get) if types else "?"
    return f"{model.hp.arch} {label} {ftype}"


def _counts(flag: str, text: str) -> list[int]:
    """llama-bench's list syntax for -p/-n/-d: one count or several, as 512,1024."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = [-1]
    check_arg(flag, text, all(v >= 0 for v in values), "token counts >= 0, as 512 or 0,4096")
    return values


def _fill(ctx: Any, n_vocab: int, depth: int) -> None:
    """An emptied cache holding `depth` tokens of context (llama-bench's -d), not timed."""
    ctx.clear()
    if depth:
        ctx.eval(np.random.default_rng(1).integers(0, n_vocab, depth).tolist())


def _run_test(ctx: Any, n_vocab: int, n_prompt: int, n_gen: int, depth: int) -> float:
    """Seconds for one repetition after `depth` tokens of context, random tokens as llama-bench
    uses. Like llama-bench, repetitions share one context, so the graphs compiled in the
    warm-up are not compiled again inside the timed region; the context is filled once and cut
    back to its first `depth` tokens before each repetition."""
    ctx.remove(0, depth)
    tokens = np.random.default_rng(0).integers(0, n_vocab, n_prompt + n_gen).tolist()
    start = time.perf_counter()
    if n_prompt:
        ctx.eval(tokens[:n_prompt])
    for tok in tokens[n_prompt:]:
        ctx.eval([tok])
    return time.perf_counter() - start


def bench(
    model: Annotated[list[str] | None, Opt("-m", "--model", help="GGUF file or known model "
                                           "name; repeat for several. Default: the default "
                                           "model.")] = None,
    n_prompt: Annotated[str, Opt("-p", "--n-prompt", help="Prompt tokens (pp test), or "
                                 "several as 512,1024; 0: skip.")] = "512",
    n_gen: Annotated[str, Opt("-n", "--n-gen", help="Generated tokens (tg test), or several; "
                              "0: skip.")] = "128",
    n_depth: Annotated[str, Opt("-d", "--n-depth", help="Tokens already in the context when "
                                "each test runs, or several as 0,4096.")] = "0",
    repetitions: Annotated[int, Opt("-r", "--repetitions")] = 5,
    ubatch: Annotated[int, Opt("-ub", "--ubatch-size")] = 512,
    n_gpu_layers: Annotated[int, Opt("-ngl", "--n-gpu-layers")] = 99,
    device: DeviceOption = "auto",
    tensor_split: TensorSplitOption = None,
    split_mode: SplitModeOption = "layer",
    main_gpu: MainGpuOption = 0,
    threads: ThreadsOption = 0,
    output: Annotated[str, Opt("-o", "--output", help="md or json.")] = "md",
    json_output: Annotated[bool, Opt("--json", help="Same as -o json.")] = False,
    verbose: VerboseOption = False,
) -> None:  # fmt: skip
    """Measure prompt processing and generation speed, as llama-bench does."""
    from llmrt.engine import load

    output = "json" if json_output else output
    prompts, gens, depths = _counts("-p", n_prompt), _counts("-n", n_gen), _counts("-d", n_depth)
    check_arg("-r", repetitions, repetitions >= 1, "a count >= 1")
    check_common(n_gpu_layers=n_gpu_layers, ubatch_size=ubatch, threads=threads)
    check_arg("-o", output, output in ("md", "json"), "md or json")
    split = parse_tensor_split(tensor_split)
    rows = []
    if output == "md":
        typer.echo("| model | size | params | backend | ngl | test | t/s |")
        typer.echo("| --- | ---: | ---: | --- | --: | ---: | ---: |")
    for name in model or [None]:
        m = load(name, device=device, n_gpu_layers=n_gpu_layers, threads=threads or None,
                 tensor_split=split, split_mode=split_mode, main_gpu=main_gpu)  # fmt: skip
        if verbose:
            from llmrt.cli.run import graph_report, placement

            typer.echo(f"llmrt: {m.path.name}: {placement(m)}", err=True)
            for line in graph_report(m):
                typer.echo(f"llmrt: {line}", err=True)
        tests = [(f"pp{p}", p, 0) for p in prompts if p]
        tests += [(f"tg{n}", 0, n) for n in gens if n]
        for depth in depths:
            for test, np_, ng in tests:
                ctx = m.context(n_ctx=max(256, depth + np_ + ng), n_ubatch=ubatch)
                _fill(ctx, m.hp.n_vocab, depth)
                _run_test(ctx, m.hp.n_vocab, np_, ng, depth)  # warm-up: compiles the graphs
                times = [_run_test(ctx, m.hp.n_vocab, np_, ng, depth) for _ in range(repetitions)]
                speeds = [(np_ + ng) / t for t in times]
                name = f"{test} @ d{depth}" if depth else test
                row = {
                    "model": describe(m),
                    "file": str(m.path),
                    "size_bytes": m.size_bytes,
                    "params": m.n_params,
                    "backend": ",".join(d.id for d in m.devices),
                    "tensor_split": split,
                    "ngl": n_gpu_layers,
                    "n_prompt": np_,
                    "n_gen": ng,
                    "n_depth": depth,
                    "test": name,
                    "avg_ts": statistics.fmean(speeds),
                    "stddev_ts": statistics.stdev(speeds) if len(speeds) > 1 else 0.0,
                    "samples_ts": speeds,
                    "switches": switches_set(),
                }
                rows.append(row)
                if output == "md":
                    typer.echo(
                        f"| {row['model']} | {m.size_bytes / 2**20:.2f} MiB | "
                        f"{m.n_params / 1e6:.2f} M | {row['backend']} | {n_gpu_layers} | "
                        f"{name} | {row['avg_ts']:.2f} ± {row['stddev_ts']:.2f} |"
                    )
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
