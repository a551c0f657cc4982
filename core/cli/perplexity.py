"""``llmrt perplexity``: llama-perplexity's perplexity over a text, and its KL-divergence mode."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

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
from llmrt.cli.run import ModelOpt, NglOpt
from llmrt.errors import LlmrtError, UsageError

Opt = typer.Option


def perplexity(
    file: Annotated[Path, Opt("-f", "--file", help="The text to score.")],
    model: ModelOpt = None,
    ctx_size: Annotated[int, Opt("-c", "--ctx-size", help="Tokens per chunk.")] = 512,
    batch_size: Annotated[int, Opt("-b", "--batch-size", help="Tokens per ubatch.")] = 512,
    chunks: Annotated[int, Opt("--chunks", help="Chunks to score; -1: all.")] = -1,
    device: DeviceOption = "auto",
    tensor_split: TensorSplitOption = None,
    split_mode: SplitModeOption = "layer",
    main_gpu: MainGpuOption = 0,
    threads: ThreadsOption = 0,
    n_gpu_layers: NglOpt = -1,
    cache_type: Annotated[str, Opt("-ctk", "--cache-type", help="KV cache: f16 or f32.")] = "f16",
    kl_base: Annotated[
        Path | None,
        Opt(
            "--kl-divergence-base",
            help="Save this run's log-probs here; with --kl-divergence, read them from here.",
        ),
    ] = None,  # fmt: skip
    kl_divergence: Annotated[
        bool, Opt("--kl-divergence", help="Compare with the log-probs in --kl-divergence-base.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Perplexity of a model over a text, as llama-perplexity computes it (non-overlapping chunks
    of -c tokens, the second half of each scored); with --kl-divergence-base, save or compare the
    distributions (KL divergence, top-1 agreement, PPL ratio)."""
    from llmrt import perplexity as P
    from llmrt.engine import load

    check_common(ctx_size=ctx_size, n_gpu_layers=n_gpu_layers, batch_size=batch_size,
                 threads=threads)  # fmt: skip
    check_arg("-c", ctx_size, ctx_size >= 8, "a chunk size of at least 8 tokens")
    check_arg("--chunks", chunks, chunks == -1 or chunks >= 1, "a count >= 1, or -1 for all")
    if kl_divergence and kl_base is None:
        raise UsageError("--kl-divergence needs --kl-divergence-base FILE (made by a run without "
                         "--kl-divergence)")  # fmt: skip
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None
    base = P.Base.load(kl_base) if kl_divergence and kl_base is not None else None
    t0 = time.perf_counter()
    m = load(model, device=device, n_gpu_layers=n_gpu_layers, threads=threads or None,
             tensor_split=parse_tensor_split(tensor_split), split_mode=split_mode,
             main_gpu=main_gpu)  # fmt: skip
    tok = m.tokenizer
    tokens = tok.encode(text, add_special=True, parse_special=False)
    if base is not None:
        if base.n_vocab != m.hp.n_vocab:
            raise LlmrtError(f"the base has a vocabulary of {base.n_vocab}, this model "
                             f"{m.hp.n_vocab}: not the same tokenizer")  # fmt: skip
        if base.tokens.tolist() != tokens:
            raise LlmrtError("this model tokenizes the text differently from the base run")
        ctx_size = base.n_ctx
        chunks = len(base.q) if chunks < 0 else min(chunks, len(base.q))
    ctx = m.context(n_ctx=ctx_size, n_ubatch=min(batch_size, ctx_size), kv_type=cache_type)
    bos = tok.bos_id if tok.add_bos else None
    n_chunks = len(tokens) // ctx_size if chunks < 0 else min(chunks, len(tokens) // ctx_size)
    err = sys.stderr
    print(f"llmrt: {m.path.name} on {m.device.id}: {len(tokens)} tokens, {n_chunks} chunks of "
          f"{ctx_size}", file=err)  # fmt: skip
    if verbose:
        from llmrt.cli.run import graph_report, placement

        print(f"llmrt: {placement(m)}", file=err)
        for line in graph_report(m):
            print(f"llmrt: {line}", file=err)
    ppl, kld, saved = P.Perplexity(), P.Divergence(), []
    for scores in P.chunk_scores(ctx, tokens, bos, chunks):
        running = ppl.add(scores)
        if base is not None:
            kld.add(base.logp(scores.index), scores)
        elif kl_base is not None:
            saved.append(scores)
        sys.stdout.write(f"[{scores.index + 1}]{running:.4f},")
        sys.stdout.flush()
    value, error = ppl.estimate()
    print(f"\nFinal estimate: PPL = {value:.4f} +/- {error:.5f}")
    if base is not None:
        print()
        kld.report(print)
    elif kl_base is not None:
        P.save_base(kl_base, tokens, ctx_size, m.hp.n_vocab, saved)
        print(f"llmrt: log-probs of {len(saved)} chunks saved to {kl_base}", file=err)
    print(f"llmrt: {time.perf_counter() - t0:.1f} s", file=err)


def register(app: typer.Typer) -> None:
    app.command("perplexity")(perplexity)
