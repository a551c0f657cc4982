"""From a request to scheduler tasks and back: prompts (text, token ids, batches), sampling
settings, logit_bias, submission, the merged events of a request's tasks, and the JSON shapes the
endpoints share (generation_settings, probabilities, SSE)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from llmrt.errors import LlmrtError
from llmrt.sampling import SamplingParams
from llmrt.server import schemas as S
from llmrt.server.slots import QueueFull, Task
from llmrt.server.state import ApiError, State, scheduler_of

# --- prompts ---


def tokens_of(state: State, prompt: Any) -> list[int]:
    """One prompt's token ids (see `token_ids`), checked to be non-empty and to fit a slot."""
    ids = token_ids(state, prompt)
    if not ids:
        raise ApiError(400, "the prompt is empty")
    n_ctx = scheduler_of(state).n_ctx_slot
    if len(ids) > n_ctx:
        raise ApiError(
            400,
            f"the request exceeds the available context size: the prompt has {len(ids)} "
            f"tokens, the context of a slot holds {n_ctx}",
            "exceed_context_size_error",
            n_prompt_tokens=len(ids),
            n_ctx=n_ctx,
        )
    return ids


def token_ids(state: State, prompt: Any) -> list[int]:
    """One prompt's token ids: text, token ids, or a list mixing both (text pieces are tokenized
    in place, the first with the BOS), or {"prompt_string": text}."""
    tok = state.model.tokenizer
    if isinstance(prompt, dict):
        if "multimodal_data" in prompt:
            raise ApiError(400, "multimodal_data: this model takes no images or audio")
        text = prompt.get("prompt_string")
        if not isinstance(text, str):
            raise ApiError(400, "a prompt object needs a `prompt_string` text")
        prompt = text
    if isinstance(prompt, str):
        ids = tok.encode(prompt, add_special=True, parse_special=True)
    else:
        ids = []
        for i, part in enumerate(prompt):
            if isinstance(part, str):
                ids += tok.encode(part, add_special=i == 0, parse_special=True)
            elif isinstance(part, int) and not isinstance(part, bool):
                ids.append(part)
            else:
                raise ApiError(400, f"a prompt list holds token ids and texts, got {part!r}")
    n_vocab = state.model.hp.n_vocab
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise ApiError(400, f"invalid token id {bad[0]}: the vocabulary has {n_vocab} tokens")
    return ids


def prompts_of(state: State, prompt: Any) -> list[list[int]]:
    """A request's prompts, as llama-server reads `prompt`: a list holding token ids is ONE
    prompt; any other list is a batch, one prompt per element."""
    if isinstance(prompt, list) and not any(isinstance(p, int) for p in prompt):
        if not prompt:
            raise ApiError(400, "the prompt is empty")
        return [tokens_of(state, p) for p in prompt]
    return [tokens_of(state, prompt)]


# --- sampling settings ---

SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams)) - {"logit_bias"}


def n_predict_of(state: State, asked: int | None) -> int:
    """The request's token count; the server's -n when it names none (or -1, as llama-server)."""
    return state.settings.n_predict if asked is None or asked == -1 else asked


def logit_bias_of(state: State, bias: Any) -> tuple[tuple[int, float], ...]:
    """llama-server's logit_bias forms: [[token, bias], ...] or OpenAI's {"token": bias}; a token
    is an id or a text (each of its tokens gets the bias), a bias a number or false (banned)."""
    if bias is None:
        return ()
    if isinstance(bias, dict):
        pairs = list(bias.items())
    elif isinstance(bias, list):
        pairs = []
        for item in bias:
            if not (isinstance(item, list) and len(item) == 2):
                raise ApiError(400, f"logit_bias: each entry is [token, bias], got {item!r}")
            pairs.append((item[0], item[1]))
    else:
        raise ApiError(400, "logit_bias: a list of [token, bias] pairs or an object")
    tok = state.model.tokenizer
    n_vocab = state.model.hp.n_vocab
    out: list[tuple[int, float]] = []
    for key, value in pairs:
        if value is False:
            value = -math.inf
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, f"logit_bias: the bias of {key!r} is a number or false")
        elif not math.isfinite(value):
            raise ApiError(400, f"logit_bias: the bias of {key!r} is not finite")
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)  # OpenAI's object form names token ids as strings
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise ApiError(400, f"logit_bias: a token is an id or a text, got {key!r}")
        ids = [key] if isinstance(key, int) else tok.encode(key, add_special=False)
        for t in ids:
            if not 0 <= t < n_vocab:
                raise ApiError(400, f"logit_bias: invalid token id {t} (vocabulary: {n_vocab})")
            out.append((t, float(value)))
    return tuple(out)


def sampling_of(state: State, req: S.Sampling) -> SamplingParams:
    """The server's sampling defaults (`llmrt serve --temp ...`) with the fields the request
    set, its logit_bias, and ignore_eos as a ban of the end-of-generation tokens (how
    llama-server applies and reports it)."""
    given = {k: getattr(req, k) for k in req.model_fields_set if k in SAMPLING_FIELDS}
    params = replace(state.settings.sampling, **given)
    bias = logit_bias_of(state, req.logit_bias)
    if req.ignore_eos:
        bias += tuple((t, -math.inf) for t in sorted(state.model.tokenizer.eog_ids))
    params = replace(params, logit_bias=params.logit_bias + bias)
    try:
        params.validate()
    except LlmrtError as exc:
        raise ApiError(400, str(exc)) from None
    return params


def make_tasks(
    state: State,
    req: S.Sampling,
    prompts: list[list[int]],
    n_predict: int,
    stop: list[str],
    n_choices: int = 1,
    **options: Any,
) -> list[Task]:
    """One task per prompt and choice (task i*n + j: prompt i, choice j)."""
    sched = scheduler_of(state)
    if req.id_slot >= len(sched.slots):
        raise ApiError(400, f"id_slot {req.id_slot}: the server has {len(sched.slots)} slots")
    if not 1 <= n_choices <= len(sched.slots):
        raise ApiError(400, f"n: 1 to the server's {len(sched.slots)} slots, got {n_choices}")
    params = sampling_of(state, req)
    n_probs = options.pop("n_probs", params.n_probs)
    tasks = []
    for prompt in prompts:
        for _ in range(n_choices):
            tasks.append(Task(
                prompt=prompt,
                params=params,
                n_predict=n_predict,
                stop=[s for s in stop if s],
                n_probs=n_probs,
                post_sampling_probs=req.post_sampling_probs,
                cache_prompt=req.cache_prompt,
                n_keep=req.n_keep,
                n_discard=req.n_discard,
                id_slot=req.id_slot,
                ignore_eos=req.ignore_eos,
                stream=bool(getattr(req, "stream", False)),
                verbose=req.verbose or state.settings.verbose,
                return_progress=req.return_progress,
                timings_per_token=req.timings_per_token,
                index=len(tasks),
                **options,
            ))  # fmt: skip
    return tasks


# --- structured output ---


def schema_of_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's response_format as a JSON schema: json_object (any object, or its `schema`),
    json_schema (its json_schema.schema); text or none: no schema."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = fmt.get("schema", {})
    elif kind == "json_schema":
        wrapper = fmt.get("json_schema")
        if not isinstance(wrapper, dict):
            raise ApiError(400, "response_format: json_schema needs a `json_schema` object")
        schema = wrapper.get("schema", {})
    else:
        raise ApiError(400, f"response_format: type is text, json_object or json_schema, "
                            f"got {kind!r}")  # fmt: skip
    if not isinstance(schema, dict):
        raise ApiError(400, f"response_format: the schema is an object, got {schema!r}")
    return schema


async def grammar_of(
    state: State,
    grammar: str | None = None,
    json_schema: dict[str, Any] | None = None,
    lark: str | None = None,
) -> str | None:
    """The llguidance grammar a request's output must match (None: free text), checked now so a
    bad grammar or schema is a 400 before anything is generated."""
    from llmrt.grammar import GrammarError, compile_grammar, grammar_tokenizer

    if grammar == "":
        grammar = None
    if grammar is None and json_schema is None and lark is None:
        return None
    if grammar is not None and json_schema is not None:
        raise ApiError(400, "give a grammar or a json_schema, not both")
    model = state.model

    def build() -> str:  # ~1 s the first time: the tokenizer's view for llguidance
        lltokenizer = grammar_tokenizer(model.tokenizer, model.hp.n_vocab)
        if lark is not None:  # ours (tool calls): an error here is a bug, not the client's
            return compile_grammar(lltokenizer, lark=lark)
        return compile_grammar(lltokenizer, gbnf=grammar, json_schema=json_schema)

    try:
        return await asyncio.to_thread(build)
    except GrammarError as exc:
        what = "grammar" if grammar is not None else "json_schema"
        raise ApiError(400, f"invalid {what}: {exc}") from None


# --- running tasks ---


def submit(state: State, tasks: list[Task]) -> list[Task]:
    """Queue a request's tasks; they share one event queue. All or none are queued."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    sched = scheduler_of(state)
    queued: list[Task] = []
    for task in tasks:
        task.loop, task.events = loop, events
        try:
            queued.append(sched.submit(task))
        except QueueFull:
            for t in queued:
                sched.cancel(t)
            raise ApiError(
                503, "the server is busy: the request queue is full", "unavailable_error"
            ) from None
    return tasks


async def events(
    state: State, tasks: list[Task], request: Request | None
) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    """(task index, kind, data) of the tasks' events until each has ended; the tasks still
    running are cancelled if the consumer stops early (the client hung up). Without streaming,
    a watcher polls the connection so a hung-up client also cancels."""
    queue = tasks[0].events
    running = {t.index for t in tasks}
    watcher = None
    if request is not None:

        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.5)
            queue.put_nowait((-1, "gone", {}))

        watcher = asyncio.ensure_future(watch())
    try:
        while running:
            index, kind, data = await queue.get()
            if kind == "gone":
                return
            if kind in ("done", "error"):
                running.discard(index)
            yield index, kind, data
    finally:
        if watcher is not None:
            watcher.cancel()
        for t in tasks:
            if t.index in running:
                scheduler_of(state).cancel(t)


@dataclass
class Result:
    """A finished task's final event, with what its token events carried."""

    task: Task
    data: dict[str, Any]
    probs: list[dict[str, Any]] = field(default_factory=list)


async def results(state: State, tasks: list[Task], request: Request) -> list[Result] | None:
    """Every task's result, in task order; None if the client hung up. A failed task fails the
    request (500: a decode failed, nothing the client did)."""
    done: dict[int, Result] = {}
    async for index, kind, data in events(state, tasks, request):
        if kind == "done":
            done[index] = Result(tasks[index], data, data["completion_probabilities"])
        elif kind == "error":
            raise ApiError(500, data["message"], "server_error")
    if len(done) < len(tasks):
        return None
    return [done[t.index] for t in tasks]


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream_response(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


# --- shapes ---

# the chain of llmrt.sampling, in llama-server's names for its stages
SAMPLERS = ["penalties", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def generation_settings(
    params: SamplingParams,
    n_predict: int,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    stream: bool = False,
    post_sampling_probs: bool = False,
) -> dict[str, Any]:
    """A request's settings in llama-server's `generation_settings` shape. Samplers llmrt does
    not have (DRY, mirostat, adaptive-p) are listed with llama-server's values that turn them off,
    which is what they are here."""
    p = params
    return {
        "seed": p.seed,
        "temperature": p.temperature,
        "dynatemp_range": p.dynatemp_range,
        "dynatemp_exponent": p.dynatemp_exponent,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "top_n_sigma": p.top_n_sigma,
        "xtc_probability": p.xtc_probability,
        "xtc_threshold": p.xtc_threshold,
        "typical_p": p.typical_p,
        "repeat_last_n": p.repeat_last_n,
        "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "dry_multiplier": 0.0,
        "mirostat": 0,
        "adaptive_target": -1.0,
        "adaptive_decay": 0.9,
        "stop": list(stop),
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "n_keep": 0,
        "ignore_eos": ignore_eos,
        "stream": stream,
        "logit_bias": [
            {"token": t, "bias": b if math.isfinite(b) else None} for t, b in p.logit_bias
        ],
        "n_probs": p.n_probs,
        "min_keep": p.min_keep,
        "samplers": SAMPLERS,
        "post_sampling_probs": post_sampling_probs,
    }


def settings_of(task: Task, n_ctx: int) -> dict[str, Any]:
    return {
        "n_ctx": n_ctx,
        **generation_settings(task.params, task.n_predict, task.stop, task.ignore_eos,
                              task.stream, task.post_sampling_probs),
        "cache_prompt": task.cache_prompt,
        "id_slot": task.id_slot,
        "n_keep": task.n_keep,
        "n_discard": task.n_discard,
    }  # fmt: skip


def native_result(state: State, task: Task, data: dict[str, Any], stream: bool) -> dict[str, Any]:
    """llama-server's final /completion object for a finished task (the last SSE chunk when
    streaming: no content, tokens or probabilities there, the chunks carried them)."""
    stop_type = data["stop_type"]
    out = {
        "index": task.index,
        "content": "" if stream else data["content"],
        "tokens": data["tokens"] if task.return_tokens and not stream else [],
        "id_slot": data["id_slot"],
        "stop": True,
        "model": state.alias,
        "tokens_predicted": data["tokens_predicted"],
        "tokens_evaluated": data["tokens_evaluated"],
        "generation_settings": settings_of(task, data["n_ctx"]),
        "prompt": state.model.tokenizer.decode(task.prompt, unparse_special=True),
        "has_new_line": "\n" in data["content"],
        "truncated": data["truncated"],
        "stop_type": stop_type,
        "stopping_word": data["stopping_word"],
        "stopped_eos": stop_type == "eos",
        "stopped_limit": stop_type == "limit",
        "stopped_word": stop_type == "word",
        "tokens_cached": data["tokens_cached"],
        "timings": data["timings"],
    }
    if task.n_probs and not stream:
        out["completion_probabilities"] = data["completion_probabilities"]
    return out


def pick_fields(obj: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """llama-server's response_fields: only the named fields; `a/b` is obj["a"]["b"], returned
    under the key "a/b". Names that are not there are left out."""
    out = {}
    for name in names:
        value: Any = obj
        for part in name.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[name] = value
    return out


def usage(data: dict[str, Any]) -> dict[str, Any]:
    n_prompt, n_gen = data["tokens_evaluated"], data["tokens_predicted"]
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_gen,
        "total_tokens": n_prompt + n_gen,
        "prompt_tokens_details": {"cached_tokens": data["timings"]["cache_n"]},
    }


def total_usage(done: list[Result], n_choices: int = 1) -> dict[str, Any]:
    """The usage of a request's tasks: each prompt counted once, every choice's tokens."""
    parts = [usage(r.data) for r in done]
    prompts = parts[::n_choices]
    n_prompt = sum(p["prompt_tokens"] for p in prompts)
    n_gen = sum(p["completion_tokens"] for p in parts)
    cached = sum(p["prompt_tokens_details"]["cached_tokens"] for p in prompts)
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_gen,
        "total_tokens": n_prompt + n_gen,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def finish_reason(stop_type: str) -> str:
    return "length" if stop_type == "limit" else "stop"
