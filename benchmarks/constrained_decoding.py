"""What constrained decoding (a JSON schema, llguidance) costs token generation on the CPU.

    python benchmarks/constrained_decoding.py [--rounds 8] [--n 64] [--model smollm2-135m]

Issue 18's acceptance: "constrained decoding costs <= 10% of tg on the CPU". Both modes run the
same chat prompt on the same context for the same n tokens (the end-of-generation token does
not stop a free run; the schema's minItems keeps a constrained one going), with the server's
default sampling chain (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, seed 42). Each
token is a sample then a one-token decode; tg is n / (time from the first sample to the last).
The modes are interleaved (free, schema, schema, free, ...) after one warm-up run of each, so
that a machine shared with other jobs slows both alike; the medians of the rounds are compared,
and the time sampling takes per token (where the grammar's mask is computed and applied) is
shown beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from llmrt.engine import load
from llmrt.grammar import Constraint, compile_grammar, grammar_tokenizer
from llmrt.sampling import Sampler, SamplingParams

SCHEMA = {
    "type": "array",
    "minItems": 32,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "city": {"type": "string"},
            "age": {"type": "integer"},
        },
        "required": ["name", "city", "age"],
    },
}
QUESTION = "List twenty people as JSON objects with a name, a city and an age."


def run(model, ctx, prompt: list[int], n: int, grammar: str | None) -> tuple[float, float, str]:
    """One generation of n tokens: (tokens per second, sampling ms per token, the text)."""
    constraint = None
    if grammar is not None:
        constraint = Constraint(grammar_tokenizer(model.tokenizer, model.hp.n_vocab), grammar)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=42)
    sampler = Sampler(params, model.hp.n_vocab, constraint=constraint)
    ctx.clear()
    for tok in prompt:
        sampler.accept(tok)
    logits = ctx.eval(prompt, 0, prompt=True)
    tokens: list[int] = []
    t_sample = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        s0 = time.perf_counter()
        tok = sampler.sample(logits)
        t_sample += time.perf_counter() - s0
        tokens.append(tok)
        if i + 1 < n:
            logits = ctx.eval([tok], 0, prompt=False)
    elapsed = time.perf_counter() - t0
    return n / elapsed, 1e3 * t_sample / n, model.tokenizer.decode(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--n", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    model = load(args.model, device="cpu", threads=args.threads)
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}])
    prompt = tok.encode(text, add_special=True, parse_special=True)  # as the server's prompts
    grammar = compile_grammar(grammar_tokenizer(tok, model.hp.n_vocab), json_schema=SCHEMA)
    ctx = model.context(n_ctx=len(prompt) + args.n + 8)
    modes = {"free": None, "json_schema": grammar}
    for g in modes.values():  # warm-up: graphs compiled, llguidance's tokenizer built
        run(model, ctx, prompt, args.n, g)

    rates: dict[str, list[float]] = {m: [] for m in modes}
    sample_ms: dict[str, list[float]] = {m: [] for m in modes}
    sample_text = ""
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        line = []
        for mode in order:
            rate, ms, out = run(model, ctx, prompt, args.n, modes[mode])
            rates[mode].append(rate)
            sample_ms[mode].append(ms)
            line.append(f"{mode} {rate:6.1f} t/s (sampling {ms:.2f} ms/t)")
            if mode == "json_schema":
                sample_text = out
        print(f"round {r + 1}: " + ", ".join(line), flush=True)

    free, constrained = statistics.median(rates["free"]), statistics.median(rates["json_schema"])
    print(f"\nprompt {len(prompt)} tokens, n {args.n}, {args.rounds} rounds, medians:")
    for mode in modes:
        print(f"  {mode:12s} tg {statistics.median(rates[mode]):6.1f} t/s, sampling "
              f"{statistics.median(sample_ms[mode]):.2f} ms/token")  # fmt: skip
    pairs = [1 - c / f for f, c in zip(rates["free"], rates["json_schema"], strict=True)]
    print(f"  cost of the schema: {100 * (1 - constrained / free):.1f}% of tg (per round: "
          f"{', '.join(f'{100 * p:.0f}%' for p in pairs)})")  # fmt: skip
    head = sample_text[: sample_text.rfind("}") + 1]  # n tokens stop it inside the array
    people = json.loads(head + "]")  # what it wrote so far parses: complete objects
    print(f"  a constrained output ({len(people)} complete objects): {sample_text[:70]!r}...")


if __name__ == "__main__":
    main()
