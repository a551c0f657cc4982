"""``llmrt run``: generate text from a prompt, or chat, with llama-cli's flags and timing lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llmrt.cli.common import DeviceOption
from llmrt.errors import UsageError

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
    int, Opt("-n", "--n-predict", help="Tokens to generate; -1: until end of generation.")
]
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
    temp: Annotated[float, Opt("--temp", help="Temperature; 0: greedy.")] = 0.8,
    top_k: Annotated[int, Opt("--top-k", help="Top-k; 0: off.")] = 40,
    top_p: Annotated[float, Opt("--top-p", help="Top-p; 1.0: off.")] = 0.95,
    min_p: Annotated[float, Opt("--min-p", help="Min-p; 0.0: off.")] = 0.05,
    typical: Annotated[float, Opt("--typical", help="Locally typical p; 1.0: off.")] = 1.0,
    repeat_penalty: Annotated[float, Opt("--repeat-penalty", help="1.0: off.")] = 1.0,
    repeat_last_n: Annotated[int, Opt("--repeat-last-n", help="Tokens penalized.")] = 64,
    n_gpu_layers: NglOpt = -1,
    threads: Annotated[int, Opt("-t", "--threads", help="CPU threads.")] = 0,
    device: DeviceOption = "auto",
    conversation: ChatOpt = False,
    chat_template: ChatTemplateOpt = None,
    system_prompt: Annotated[str | None, Opt("-sys", "--system-prompt")] = None,
    cache_type: Annotated[str, Opt("-ctk", "--cache-type", help="KV cache: f16 or f32.")] = "f16",
    display_prompt: Annotated[bool, Opt("--display-prompt/--no-display-prompt")] = True,
) -> None:
    """Generate text from a prompt (like llama-cli), or chat with -cnv."""
    from llmrt.engine import generate, load
    from llmrt.sampling import Sampler, SamplingParams

    params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            typical_p=typical, repeat_penalty=repeat_penalty,
                            repeat_last_n=repeat_last_n, seed=seed)  # fmt: skip
    params.validate()
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    del threads  # numpy's BLAS picks its own threads
    text = _read_prompt(prompt, file)
    t0 = time.perf_counter()
    m = load(model, device=device, n_gpu_layers=n_gpu_layers)
    ctx = m.context(n_ctx=ctx_size, n_ubatch=min(ubatch_size, batch_size), kv_type=cache_type)
    t_load_ms = (time.perf_counter() - t0) * 1e3
    tok = m.tokenizer
    sampler = Sampler(params, m.hp.n_vocab)
    print(f"llmrt: {m.path.name} on {m.device.id}, seed {sampler.seed}", file=sys.stderr)
    if conversation:
        _chat(m, ctx, sampler, n_predict, chat_template, system_prompt, text)
        _print_timings(ctx, t_load_ms, 0)
        return
    ids = tok.encode(text, add_special=True, parse_special=True)
    if display_prompt:
        sys.stdout.write(text)
    decoder = tok.decoder()
    for token in generate(ctx, ids, n_predict, sampler, tok.eog_ids):
        sys.stdout.write(decoder.add(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    _print_timings(ctx, t_load_ms, len(ids))


def _chat(m, ctx, sampler, n_predict, template, system_prompt, first) -> None:
    """Each turn renders the whole conversation, keeps the cached prefix it shares with what the
    cache holds, and evaluates only the rest (llama-server's prompt cache, for one user)."""
    from llmrt.engine import generate

    tok = m.tokenizer
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    held: list[int] = []  # the tokens the KV cache holds, in order
    pending = first
    while True:
        if not pending:
            try:
                pending = input("\n> ")
            except EOFError:
                return
        messages.append({"role": "user", "content": pending})
        pending = ""
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, template=template)
        ids = tok.encode(rendered, add_special=True, parse_special=True)
        keep = 0
        while keep < min(len(ids), len(held)) - 1 and ids[keep] == held[keep]:
            keep += 1
        ctx.remove(0, keep)
        held = ids
        decoder, reply = tok.decoder(), []
        for token in generate(ctx, ids[keep:], n_predict, sampler, tok.eog_ids):
            if token in tok.eog_ids:
                break
            held.append(token)
            piece = decoder.add(token)
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        reply.append(decoder.flush())
        sys.stdout.write(reply[-1] + "\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def register(app: typer.Typer) -> None:
    app.command("run")(run)
