"""``llmrt run``: generate text from a prompt, or chat, with llama-cli's flags and timing lines."""

from __future__ import annotations

import sys
import time
from collections import Counter
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
    check_common,
    parse_tensor_split,
)
from llmrt.errors import LlmrtError, UsageError

Opt = typer.Option


def _read_prompt(prompt: str | None, file: Path | None) -> str:
    if prompt is not None and file is not None:
        raise UsageError("give the prompt with -p or -f, not both")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read prompt file {file}: {exc.strerror}") from None
    return prompt or ""


def _print_timings(ctx, t_load_ms: float, n_prompt: int) -> None:
    t = ctx.timings

    def rate(ms: float, n: int) -> str:
        per = ms / n if n else 0.0
        tps = 1e3 * n / ms if ms > 0 else 0.0
        return f"({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

    err = sys.stderr
    print(file=err)
    print(f"llmrt_perf: sampling time = {t.t_sample_ms:10.2f} ms / {t.n_sample:5d} runs   "
          f"{rate(t.t_sample_ms, t.n_sample)}", file=err)  # fmt: skip
    print(f"llmrt_perf:     load time = {t_load_ms:10.2f} ms", file=err)
    print(f"llmrt_perf: prompt eval time = {t.t_prompt_ms:10.2f} ms / {t.n_prompt:5d} tokens "
          f"{rate(t.t_prompt_ms, t.n_prompt)}", file=err)  # fmt: skip
    print(f"llmrt_perf:        eval time = {t.t_eval_ms:10.2f} ms / {t.n_eval:5d} runs   "
          f"{rate(t.t_eval_ms, t.n_eval)}", file=err)  # fmt: skip
    total = t_load_ms + t.t_prompt_ms + t.t_eval_ms + t.t_sample_ms
    print(f"llmrt_perf:       total time = {total:10.2f} ms / {t.n_prompt + t.n_eval:5d} tokens",
          file=err)  # fmt: skip


ModelOpt = Annotated[
    str | None,
    Opt("-m", "--model", help="GGUF file or known model name (llmrt pull --list); "
        "default: the default model."),
]  # fmt: skip
NPredictOpt = Annotated[
    int,
    Opt("-n", "--n-predict", help="Tokens to generate; -1: until the end of generation or a "
        "full context."),
]  # fmt: skip
NglOpt = Annotated[int, Opt("-ngl", "--n-gpu-layers", help="Layers on the accelerator; -1: all.")]
ChatOpt = Annotated[
    bool,
    Opt("-cnv", "--conversation", "--chat", help="Chat interactively with the model's template."),
]
ChatTemplateOpt = Annotated[
    str | None, Opt("--chat-template", help="Jinja chat template to use instead of the model's.")
]


def run(
    model: ModelOpt = None,
    prompt: Annotated[str | None, Opt("-p", "--prompt", help="Prompt text.")] = None,
    file: Annotated[Path | None, Opt("-f", "--file", help="Read the prompt from a file.")] = None,
    n_predict: NPredictOpt = -1,
    ctx_size: Annotated[int, Opt("-c", "--ctx-size", help="Context size; 0: the model's.")] = 4096,
    batch_size: Annotated[int, Opt("-b", "--batch-size", help="Logical batch size.")] = 2048,
    ubatch_size: Annotated[int, Opt("-ub", "--ubatch-size", help="Physical batch size.")] = 512,
    seed: Annotated[int, Opt("-s", "--seed", help="RNG seed; -1: random.")] = -1,
    temp: Annotated[
        float, Opt("--temp", help="Temperature; 0 or below: greedy (as llama.cpp).")
    ] = 0.8,
    top_k: Annotated[int, Opt("--top-k", help="Top-k; 0: off.")] = 40,
    top_p: Annotated[float, Opt("--top-p", help="Top-p; 1.0: off.")] = 0.95,
    min_p: Annotated[float, Opt("--min-p", help="Min-p; 0.0: off.")] = 0.05,
    typical: Annotated[float, Opt("--typical", help="Locally typical p; 1.0: off.")] = 1.0,
    repeat_penalty: Annotated[float, Opt("--repeat-penalty", help="1.0: off.")] = 1.0,
    repeat_last_n: Annotated[int, Opt("--repeat-last-n", help="Tokens penalized.")] = 64,
    n_gpu_layers: NglOpt = -1,
    threads: ThreadsOption = 0,
    device: DeviceOption = "auto",
    tensor_split: TensorSplitOption = None,
    split_mode: SplitModeOption = "layer",
    main_gpu: MainGpuOption = 0,
    conversation: ChatOpt = False,
    chat_template: ChatTemplateOpt = None,
    system_prompt: Annotated[str | None, Opt("-sys", "--system-prompt")] = None,
    cache_type: Annotated[str, Opt("-ctk", "--cache-type", help="KV cache: f16 or f32.")] = "f16",
    display_prompt: Annotated[bool, Opt("--display-prompt/--no-display-prompt")] = True,
    verbose: VerboseOption = False,
) -> None:
    """Generate text from a prompt (like llama-cli), or chat with -cnv."""
    from llmrt.engine import check_prompt_fits, generate, load
    from llmrt.sampling import Sampler, SamplingParams

    check_common(n_predict=n_predict, ctx_size=ctx_size, n_gpu_layers=n_gpu_layers,
                 batch_size=batch_size, ubatch_size=ubatch_size, threads=threads,
                 top_k=top_k)  # fmt: skip
    params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            typical_p=typical, repeat_penalty=repeat_penalty,
                            repeat_last_n=repeat_last_n, seed=seed)  # fmt: skip
    params.validate()
    text = _read_prompt(prompt, file)
    t0 = time.perf_counter()
    split = parse_tensor_split(tensor_split)
    m = load(model, device=device, n_gpu_layers=n_gpu_layers, threads=threads or None,
             tensor_split=split, split_mode=split_mode, main_gpu=main_gpu)  # fmt: skip
    ctx = m.context(n_ctx=ctx_size, n_ubatch=min(ubatch_size, batch_size), kv_type=cache_type)
    t_load_ms = (time.perf_counter() - t0) * 1e3
    tok = m.tokenizer
    sampler = Sampler(params, m.hp.n_vocab)
    on = ",".join(d.id for d in m.devices)
    print(f"llmrt: {m.path.name} on {on}, seed {sampler.seed}", file=sys.stderr)
    if verbose:
        threads = f", {m.threads} CPU threads" if m.threads else ""
        print(f"llmrt: {placement(m)}; context {ctx.n_ctx} tokens, ubatch {ctx.n_ubatch}"
              f"{threads}", file=sys.stderr)  # fmt: skip
        for line in graph_report(m):
            print(f"llmrt: {line}", file=sys.stderr)
    if conversation:
        _chat(m, ctx, sampler, n_predict, chat_template, system_prompt, text)
        _print_timings(ctx, t_load_ms, 0)
        return
    ids = tok.encode(text, add_special=True, parse_special=True)
    check_prompt_fits(ctx, ids)  # before the prompt is echoed
    if display_prompt:
        sys.stdout.write(text)
    decoder = tok.decoder()
    for token in generate(ctx, ids, n_predict, sampler, tok.eog_ids):
        sys.stdout.write(decoder.add(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    _print_timings(ctx, t_load_ms, len(ids))


def placement(m) -> str:
    """Where the layers went, in runs: "layers 0-17 on cuda:0, 18-29 and the output on cpu:0"."""
    runs: list[list] = []  # [device, first, last]
    for i, dev in enumerate(m.layers):
        if runs and runs[-1][0] is dev:
            runs[-1][2] = i
        else:
            runs.append([dev, i, i])
    n = m.hp.n_layer
    parts = []
    for dev, first, last in runs:
        span = [f"{first}" if first == min(last, n - 1) else f"{first}-{min(last, n - 1)}"]
        what = "layers " + span[0] if first < n else ""
        if last == n:
            what = f"{what} and the output" if what else "the output"
        parts.append(f"{what} on {dev.id}")
    return ", ".join(parts)


def graph_report(m) -> list[str]:
    """llama.cpp's "graph splits" of the decode graph, then the ops each device declined, counted
    by op with their cause: "cuda:0 declines rope x60 -> host; set_rows x60 -> host, with its
    cache" (the causes read "declined by cuda:0: host", ...)."""
    from llmrt.device import switches_set

    segments = m.decode_segments
    if len(segments) == 1:
        lines = [f"graph splits = 1 (the decode graph, on {segments[0].id})"]
    else:
        per_device = Counter(dev.id for dev in segments)
        spread = ", ".join(f"{n} on {dev}" for dev, n in per_device.items())
        lines = [f"graph splits = {len(segments)} (the decode graph: {spread})"]
    for dev, declined in m.placement.declines().items():
        said = f"declined by {dev.id}: "
        ops = "; ".join(f"{op} x{n} -> {cause.removeprefix(said)}"
                        for (op, cause), n in sorted(declined.items()))  # fmt: skip
        lines.append(f"{dev.id} declines {ops}")
    if switches := switches_set():
        lines.append("switches not at their default: "
                     + ", ".join(f"{k}={v}" for k, v in switches.items()))  # fmt: skip
    return lines


CHAT_BANNER = (
    "== Chatting with {name}. Type a message and press Return. /exit or /bye (or Ctrl-D) leaves; "
    "Ctrl-C stops a reply, and at the prompt quits. =="
)
EXIT_COMMANDS = ("/exit", "/bye")


def _chat(m, ctx, sampler, n_predict, template, system_prompt, first) -> None:
    """Each turn renders the whole conversation, keeps the cached prefix it shares with what the
    cache holds, and evaluates only the rest (llama-server's prompt cache, for one user)."""
    from llmrt.engine import check_prompt_fits, generate

    tok = m.tokenizer
    print(CHAT_BANNER.format(name=m.path.name), file=sys.stderr)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    held: list[int] = []  # the tokens whose keys and values the KV cache holds, in order
    pending = first
    while True:
        if not pending:
            try:
                pending = input("\n> ")
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt: leave
                sys.stdout.write("\n")
                return
            if pending.strip() in EXIT_COMMANDS:
                return
            if not pending.strip():
                pending = ""
                continue
        messages.append({"role": "user", "content": pending})
        pending = ""
        # set before anything can be interrupted: Ctrl-C may come at any point of the turn
        ids, keep, new, reply = held, len(held), [], []
        decoder = tok.decoder()
        interrupted = False
        try:
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True,
                                               template=template)  # fmt: skip
            ids = tok.encode(rendered, add_special=True, parse_special=True)
            keep = 0
            while keep < min(len(ids), len(held)) - 1 and ids[keep] == held[keep]:
                keep += 1
            ctx.remove(0, keep)
            check_prompt_fits(ctx, ids[keep:])
            for token in generate(ctx, ids[keep:], n_predict, sampler, tok.eog_ids):
                if token in tok.eog_ids:
                    break
                new.append(token)
                reply.append(decoder.add(token))
                sys.stdout.write(reply[-1])
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C during a reply: stop it, keep what was said
            interrupted = True
            sys.stdout.write(" [stopped]")
        except LlmrtError as exc:  # the chat outgrew the context: say so and keep chatting
            print(f"llmrt: error: {exc}", file=sys.stderr)
            new = []
        # What the cache holds for certain: without Ctrl-C, everything it says it holds (the
        # prompt and the reply but its last token, never evaluated); after Ctrl-C, which may
        # have come in the middle of an evaluation, only what finished before it.
        committed = ctx.seq_len(0)
        if interrupted:
            committed = min(committed, len(ids) + len(new) - 1 if new else keep)
        held = (ids + new)[:committed]
        ctx.remove(0, committed)
        reply.append(decoder.flush())
        sys.stdout.write(reply[-1] + "\n")
        if new:
            messages.append({"role": "assistant", "content": "".join(reply)})
        else:  # nothing was said: forget the question, so that roles still alternate
            messages.pop()


def register(app: typer.Typer) -> None:
    app.command("run")(run)
