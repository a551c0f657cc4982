"""The FastAPI app: llama-server's native endpoints, OpenAI's, the web UI, auth and errors.

Errors are llama-server's JSON: `{"error": {"code": 400, "message": "...", "type":
"invalid_request_error"}}`. Request bodies are parsed as JSON whatever their Content-Type (as
llama-server does), validated by the pydantic models of `schemas.py`; anything a client can get
wrong is a 4xx. The model loads in a thread after the server starts listening: until it is ready
/health and every model endpoint answer 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmrt.errors import LlmrtError
from llmrt.sampling import SamplingParams
from llmrt.server import schemas as S
from llmrt.server.chat import render as render_chat
from llmrt.server.slots import QueueFull, Scheduler, Task

log = logging.getLogger("llmrt.server")

# Paths served without an API key (llama-server's public endpoints, the UI and the schema).
PUBLIC = {"/", "/health", "/v1/health", "/models", "/v1/models", "/openapi.json", "/docs"}
# Paths that answer while the model loads.
WHILE_LOADING = {"/", "/health", "/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


@dataclass
class ServerSettings:
    """What `llmrt serve` takes; llama-server's defaults where it has one."""

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096  # all slots together; each gets n_ctx // n_parallel
    n_parallel: int = 1
    n_batch: int = 512
    n_predict: int = -1  # the tokens a request that names no count generates; -1: no limit
    sampling: SamplingParams = field(default_factory=SamplingParams)  # a request's defaults
    api_key: str | None = None
    device: str = "auto"
    n_gpu_layers: int = -1
    threads: int | None = None  # host threads for the kernels; None: the physical cores
    chat_template: str | None = None  # Jinja text (serve resolves built-in names); None: the GGUF's
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra template variables
    verbose: bool = False  # every response carries `__verbose`
    cors: bool = False
    queue_size: int = 64
    alias: str | None = None
    metrics: bool = False  # /metrics only when asked (llama-server's --metrics)
    slots_endpoint: bool = True


class ApiError(Exception):
    def __init__(self, code: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.type = code, message, type_


def error_body(code: int, message: str, type_: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": type_}}


def error_response(code: int, message: str, type_: str) -> JSONResponse:
    if code >= 500:  # the exception behind it, if any, was logged with its traceback where caught
        log.warning("answered %d: %s", code, message)
    return JSONResponse(error_body(code, message, type_), status_code=code)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class _Asgi:
    """A plain ASGI middleware around `handler(scope, receive, send, app)` (Starlette's
    BaseHTTPMiddleware would hide a client's hang-up from the endpoints)."""

    def __init__(self, app: Any, handler: Callable) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.handler(scope, receive, send, self.app)


async def _json_body(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
    """POST bodies are JSON whatever the Content-Type says (llama-server ignores it; curl -d
    without -H sends application/x-www-form-urlencoded)."""
    if scope["type"] == "http" and scope["method"] == "POST":
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        scope = {**scope, "headers": headers}
    await app(scope, receive, send)


class State:
    """The loaded model and its scheduler, shared by the handlers."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.model: Any = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self.t_start = int(time.time())

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    @property
    def alias(self) -> str:
        if self.settings.alias:
            return self.settings.alias
        return self.model.path.name if self.model is not None else str(self.settings.model)

    def load(self, model: Any = None) -> None:
        s = self.settings
        try:
            if model is None:
                from llmrt.engine import load

                model = load(s.model, device=s.device, n_gpu_layers=s.n_gpu_layers,
                             threads=s.threads)  # fmt: skip
            scheduler = Scheduler(
                model,
                n_ctx=s.n_ctx,
                n_parallel=s.n_parallel,
                n_batch=s.n_batch,
                queue_size=s.queue_size,
            )
            _ = model.tokenizer  # read the vocabulary now, not on the first request
            self.model = model
            scheduler.start()
            self.scheduler = scheduler
        except Exception as exc:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = (
                str(exc) if isinstance(exc, LlmrtError) else f"{type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, LlmrtError):  # a bug, not a bad setting: keep its traceback
                log.exception("cannot load the model")
            raise


def create_app(
    settings: ServerSettings,
    model: Any = None,
    on_load_error: Callable[[str], None] | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> FastAPI:
    """The app. `model`: an already loaded `llmrt.engine.Model` (tests share one); otherwise
    `settings.model` is loaded in a thread when the app starts. `on_ready(model)` is called once
    the model serves requests, `on_load_error(message)` if it cannot load."""
    state = State(settings)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load() -> None:
            try:
                state.load(model)
            except Exception:  # noqa: BLE001
                if on_load_error is not None:
                    on_load_error(state.load_error or "failed to load the model")
                return
            if on_ready is not None:
                on_ready(state.model)

        loader = threading.Thread(target=load, name="llmrt-load", daemon=True)
        loader.start()
        yield
        if state.scheduler is not None:
            state.scheduler.shutdown()

    app = FastAPI(
        title="llmrt server",
        version="0.1.0",
        description="llama-server's API and OpenAI's, served by llmrt.",
        lifespan=lifespan,
    )
    app.state.llmrt = state

    _install_middleware(app, state)
    _install_error_handlers(app)
    _native_routes(app, state)
    _openai_routes(app, state)
    return app


def _install_middleware(app: FastAPI, state: State) -> None:
    settings = state.settings

    async def gate(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await app(scope, receive, send)
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if settings.api_key and path not in PUBLIC:
            auth = headers.get("authorization", "")
            bearer = auth.lower().startswith("bearer ")
            key = auth[7:] if bearer else headers.get("x-api-key")
            if key != settings.api_key:
                refusal = error_response(401, "Invalid API Key", "authentication_error")
        if refusal is None and not state.ready and path not in WHILE_LOADING:
            if state.load_error:
                refusal = error_response(500, state.load_error, "server_error")
            else:
                refusal = error_response(503, "Loading model", "unavailable_error")
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await app(scope, receive, send)

    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(_Asgi, handler=gate)
    app.add_middleware(_Asgi, handler=_json_body)
    app.add_middleware(_Asgi, handler=_unhandled)


async def _unhandled(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
    """An exception no handler answered is a bug: log it with its traceback and answer 500 in
    llama-server's JSON (or end the stream if the response had started)."""
    started = False

    async def tracking_send(message: dict) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as exc:  # noqa: BLE001
        if scope["type"] != "http":
            raise
        log.exception("%s %s failed", scope.get("method"), scope.get("path"))
        if not started:
            response = error_response(500, f"{type(exc).__name__}: {exc}", "server_error")
            await response(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.type)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(400, "; ".join(parts) or "invalid request", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.status_code
        return error_response(code, str(exc.detail), ERROR_TYPES.get(code, "server_error"))

    @app.exception_handler(LlmrtError)
    async def llmrt_error(request: Request, exc: LlmrtError) -> JSONResponse:
        return error_response(400, str(exc), "invalid_request_error")


# --- helpers shared by the native and OpenAI endpoints ---


def _scheduler(state: State) -> Scheduler:
    assert state.scheduler is not None  # the gate answers 503 until it is set
    return state.scheduler


def _tokens_of(state: State, prompt: str | list[int | str]) -> list[int]:
    tok = state.model.tokenizer
    if isinstance(prompt, str):
        ids = tok.encode(prompt, add_special=True, parse_special=True)
    else:
        ids = []
        for i, part in enumerate(prompt):
            if isinstance(part, str):
                ids += tok.encode(part, add_special=i == 0, parse_special=True)
            else:
                ids.append(part)
    n_vocab = state.model.hp.n_vocab
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise ApiError(400, f"invalid token id {bad[0]}: the vocabulary has {n_vocab} tokens")
    if not ids:
        raise ApiError(400, "the prompt is empty")
    n_ctx = _scheduler(state).n_ctx_slot
    if len(ids) > n_ctx:
        raise ApiError(
            400,
            f"the request exceeds the available context size: the prompt has {len(ids)} "
            f"tokens, the context of a slot holds {n_ctx}",
            "exceed_context_size_error",
        )
    return ids


def _n_predict(state: State, asked: int | None) -> int:
    """The request's token count; the server's -n when it names none (or -1, as llama-server)."""
    return state.settings.n_predict if asked is None or asked == -1 else asked


SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))


def _sampling(state: State, req: S.Sampling, **extra: Any) -> SamplingParams:
    """The server's sampling defaults (`llmrt serve --temp ...`) with the fields the request set."""
    given = {k: getattr(req, k) for k in req.model_fields_set if k in SAMPLING_FIELDS}
    params = replace(state.settings.sampling, **given, **extra)
    try:
        params.validate()
    except LlmrtError as exc:
        raise ApiError(400, str(exc)) from None
    return params


def _task(
    state: State, req: S.Sampling, prompt: list[int], n_predict: int, stop: list[str]
) -> Task:
    bias: tuple[tuple[int, float], ...] = ()
    if req.ignore_eos:  # as llama-server: the end-of-generation tokens banned by logit_bias
        bias = tuple((t, -math.inf) for t in sorted(state.model.tokenizer.eog_ids))
    params = _sampling(state, req)
    if bias:
        params = replace(params, logit_bias=params.logit_bias + bias)
    if req.id_slot >= len(_scheduler(state).slots):
        raise ApiError(400, f"id_slot {req.id_slot}: the server has {len(state.scheduler.slots)}")
    return Task(
        prompt=prompt,
        params=params,
        n_predict=n_predict,
        stop=[s for s in stop if s],
        n_probs=params.n_probs,
        post_sampling_probs=req.post_sampling_probs,
        cache_prompt=req.cache_prompt,
        id_slot=req.id_slot,
        ignore_eos=req.ignore_eos,
        stream=bool(getattr(req, "stream", False)),
        verbose=req.verbose or state.settings.verbose,
    )


def _submit(state: State, task: Task) -> Task:
    task.loop = asyncio.get_running_loop()
    task.events = asyncio.Queue()
    try:
        return _scheduler(state).submit(task)
    except QueueFull:
        raise ApiError(
            503, "the server is busy: the request queue is full", "unavailable_error"
        ) from None


async def _events(
    state: State, task: Task, request: Request | None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The task's events until its end; cancels it if the consumer stops early (the client hung
    up). Without streaming, a watcher polls the connection so a hung-up client also cancels."""
    done = False
    watcher = None
    if request is not None:

        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.5)
            task.events.put_nowait(("gone", {}))

        watcher = asyncio.ensure_future(watch())
    try:
        while True:
            kind, data = await task.events.get()
            if kind == "gone":
                return
            done = kind in ("done", "error")
            yield kind, data
            if done:
                return
    finally:
        if watcher is not None:
            watcher.cancel()
        if not done:
            _scheduler(state).cancel(task)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


# the chain of llmrt.sampling, in llama-server's names for its stages
SAMPLERS = ["penalties", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def generation_settings(
    params: SamplingParams,
    n_predict: int,
    stop: list[str] | None = None,
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
        "stop": list(stop or []),
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


def _verbose(state: State, task: Task, data: dict[str, Any]) -> dict[str, Any]:
    """llama-server's `__verbose`: the prompt as the model read it, and what it wrote."""
    prompt = state.model.tokenizer.decode(task.prompt, unparse_special=True)
    return {"prompt": prompt, "content": data["content"], "stop_type": data["stop_type"]}


def _settings_of(task: Task, n_ctx: int) -> dict[str, Any]:
    return {
        "n_ctx": n_ctx,
        **generation_settings(task.params, task.n_predict, task.stop, task.ignore_eos,
                              task.stream, task.post_sampling_probs),
        "cache_prompt": task.cache_prompt,
        "id_slot": task.id_slot,
    }  # fmt: skip


def _native_routes(app: FastAPI, state: State) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        page = resources.files("llmrt.server").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(page)

    @app.get("/health")
    @app.get("/v1/health", include_in_schema=False)
    async def health() -> JSONResponse:
        if state.load_error:
            return error_response(500, state.load_error, "server_error")
        if not state.ready:
            return error_response(503, "Loading model", "unavailable_error")
        return JSONResponse({"status": "ok"})

    def final(task: Task, data: dict[str, Any], tokens: list[int], stream: bool, ret_tokens: bool):
        stop_type = data["stop_type"]
        out = {
            "index": 0,
            "content": "" if stream else data["content"],
            "tokens": [] if stream or not ret_tokens else tokens,
            "id_slot": data["id_slot"],
            "stop": True,
            "model": state.alias,
            "tokens_predicted": data["tokens_predicted"],
            "tokens_evaluated": data["tokens_evaluated"],
            "generation_settings": _settings_of(task, data["n_ctx"]),
            "prompt": state.model.tokenizer.decode(task.prompt, unparse_special=True),
            "has_new_line": "\n" in data["content"],
            "truncated": False,
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
        if task.verbose:
            out["__verbose"] = _verbose(state, task, data)
        return out

    @app.post("/completion")
    @app.post("/completions", include_in_schema=False)
    async def completion(req: S.CompletionRequest, request: Request) -> Response:
        """llama-server's completion: text or token ids in, text (or SSE chunks) out."""
        prompt = _tokens_of(state, req.prompt)
        task = _submit(state, _task(state, req, prompt, _n_predict(state, req.n_predict), req.stop))
        if req.stream:

            async def chunks() -> AsyncIterator[str]:
                tokens: list[int] = []
                async for kind, data in _events(state, task, None):
                    if kind == "token":
                        tokens += data["tokens"]
                        yield _sse({
                            "index": 0,
                            **data,
                            "stop": False,
                            "tokens_predicted": len(tokens),
                            "tokens_evaluated": len(prompt),
                        })  # fmt: skip
                    elif kind == "done":
                        yield _sse(final(task, data, tokens, True, req.return_tokens))
                    else:
                        yield _sse(error_body(500, data["message"], "server_error"))

            return _stream(chunks())
        tokens: list[int] = []
        async for kind, data in _events(state, task, request):
            if kind == "token":
                tokens += data["tokens"]
            elif kind == "done":
                return JSONResponse(final(task, data, tokens, False, req.return_tokens))
            else:
                return error_response(500, data["message"], "server_error")
        return Response(status_code=499)  # the client hung up; nobody reads this

    @app.post("/tokenize")
    async def tokenize(req: S.TokenizeRequest) -> JSONResponse:
        tok = state.model.tokenizer
        ids = tok.encode(req.content, add_special=req.add_special, parse_special=req.parse_special)
        if not req.with_pieces:
            return JSONResponse({"tokens": ids})
        out = []
        for t in ids:
            piece = tok.token_to_piece(t, special=True)
            try:
                out.append({"id": t, "piece": piece.decode("utf-8")})
            except UnicodeDecodeError:
                out.append({"id": t, "piece": list(piece)})
        return JSONResponse({"tokens": out})

    @app.post("/detokenize")
    async def detokenize(req: S.DetokenizeRequest) -> JSONResponse:
        n_vocab = state.model.hp.n_vocab
        bad = [t for t in req.tokens if t >= n_vocab]
        if bad:
            raise ApiError(400, f"invalid token id {bad[0]}: the vocabulary has {n_vocab} tokens")
        text = state.model.tokenizer.decode(req.tokens, unparse_special=True)
        return JSONResponse({"content": text})

    @app.get("/props")
    async def props() -> JSONResponse:
        sched = _scheduler(state)
        tok = state.model.tokenizer
        params = generation_settings(state.settings.sampling, state.settings.n_predict)
        return JSONResponse({
            "default_generation_settings": {"id": 0, "n_ctx": sched.n_ctx_slot, "params": params},
            "total_slots": len(sched.slots),
            "model_path": str(state.model.path),
            "model_alias": state.alias,
            "chat_template": state.settings.chat_template or tok.chat_template,
            "bos_token": tok.token_text(tok.bos_id) if tok.bos_id is not None else None,
            "eos_token": tok.token_text(tok.eos_id) if tok.eos_id is not None else None,
            "modalities": {"vision": False, "audio": False},
            "build_info": "llmrt 0.1.0",
        })  # fmt: skip

    @app.get("/slots")
    async def slots() -> JSONResponse:
        if not state.settings.slots_endpoint:
            return error_response(501, "This server does not support slots endpoint.",
                                  "not_supported_error")  # fmt: skip
        sched = _scheduler(state)
        out = []
        for s in sched.slots:
            task = s.task
            out.append({
                "id": s.id,
                "id_task": task.id if task is not None else -1,
                "n_ctx": s.n_ctx,
                "is_processing": task is not None,
                "tokens_cached": len(s.cache),
                "params": _settings_of(task, s.n_ctx) if task is not None else None,
                "next_token": {"n_decoded": s.n_decoded if task is not None else 0},
            })  # fmt: skip
        return JSONResponse(out)

    @app.get("/metrics")
    async def metrics() -> Response:
        if not state.settings.metrics:
            return error_response(501, "This server does not support metrics endpoint. "
                                  "Start it with `--metrics`", "not_supported_error")  # fmt: skip
        from llmrt.server.metrics import render

        text, content_type = render(_scheduler(state))
        return Response(text, media_type=content_type)


def _openai_routes(app: FastAPI, state: State) -> None:
    def finish_reason(stop_type: str) -> str:
        return "length" if stop_type == "limit" else "stop"

    def usage(data: dict[str, Any]) -> dict[str, int]:
        n_prompt, n_gen = data["tokens_evaluated"], data["tokens_predicted"]
        return {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                "total_tokens": n_prompt + n_gen}  # fmt: skip

    @app.get("/v1/models")
    @app.get("/models", include_in_schema=False)
    async def models() -> JSONResponse:
        m = state.model
        meta = None
        if m is not None:
            meta = {"n_vocab": m.hp.n_vocab, "n_ctx_train": m.hp.n_ctx_train,
                    "n_params": m.n_params, "size": m.size_bytes}  # fmt: skip
        return JSONResponse({
            "object": "list",
            "data": [{"id": state.alias, "object": "model", "created": state.t_start,
                      "owned_by": "llmrt", "meta": meta}],
        })  # fmt: skip

    async def run(req: Any, request: Request, prompt: list[int], n_predict: int, kind: str):
        stop = S.stop_list(req.stop)
        task = _submit(state, _task(state, req, prompt, _n_predict(state, n_predict), stop))
        cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        head = {"id": cid, "object": obj, "created": created, "model": state.alias,
                "system_fingerprint": "llmrt-0.1.0"}  # fmt: skip
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage

            def choice(text: str | None, reason: str | None, first: bool = False) -> dict:
                if kind == "chat":
                    delta: dict[str, Any] = {}
                    if first:
                        delta = {"role": "assistant", "content": None}
                    elif text:
                        delta = {"content": text}
                    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}

            async def chunks() -> AsyncIterator[str]:
                chunk_head = {**head, "object": obj + ".chunk" if kind == "chat" else obj}
                if kind == "chat":
                    yield _sse({**chunk_head, "choices": [choice(None, None, first=True)]})
                async for ev, data in _events(state, task, None):
                    if ev == "token":
                        if data["content"]:
                            yield _sse({**chunk_head, "choices": [choice(data["content"], None)]})
                    elif ev == "done":
                        reason = finish_reason(data["stop_type"])
                        yield _sse({**chunk_head, "choices": [choice(None, reason)],
                                    "timings": data["timings"]})  # fmt: skip
                        if include_usage:
                            yield _sse({**chunk_head, "choices": [], "usage": usage(data)})
                    else:
                        yield _sse(error_body(500, data["message"], "server_error"))
                yield "data: [DONE]\n\n"

            return _stream(chunks())
        async for ev, data in _events(state, task, request):
            if ev == "done":
                reason = finish_reason(data["stop_type"])
                if kind == "chat":
                    message = {"role": "assistant", "content": data["content"]}
                    ch = {"index": 0, "message": message, "logprobs": None,
                          "finish_reason": reason}  # fmt: skip
                else:
                    ch = {"index": 0, "text": data["content"], "logprobs": None,
                          "finish_reason": reason}  # fmt: skip
                out = {**head, "choices": [ch], "usage": usage(data), "timings": data["timings"]}
                if task.verbose:
                    out["__verbose"] = _verbose(state, task, data)
                return JSONResponse(out)
            if ev == "error":
                return error_response(500, data["message"], "server_error")
        return Response(status_code=499)

    @app.post("/v1/completions")
    async def completions(req: S.OAICompletionRequest, request: Request) -> Response:
        """OpenAI's text completion."""
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) > 1:
                raise ApiError(400, "only one prompt per request is supported")
            prompt = prompt[0]
        ids = _tokens_of(state, prompt)
        return await run(req, request, ids, req.max_tokens, "text")

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    async def chat(req: S.ChatRequest, request: Request) -> Response:
        """OpenAI's chat completion: the messages through the model's chat template."""
        ids = _tokens_of(state, _chat_prompt(state, req))
        n = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await run(req, request, ids, n, "chat")

    @app.post("/apply-template")
    async def apply_template(req: S.ChatMessages) -> JSONResponse:
        """The prompt a chat request's messages make, without generating."""
        return JSONResponse({"prompt": _chat_prompt(state, req)})

    @app.post("/v1/chat/completions/input_tokens")
    @app.post("/chat/completions/input_tokens", include_in_schema=False)
    async def chat_input_tokens(req: S.ChatMessages) -> JSONResponse:
        """How many tokens a chat request's prompt takes."""
        return JSONResponse({"input_tokens": len(_tokens_of(state, _chat_prompt(state, req)))})


def _chat_prompt(state: State, req: S.ChatMessages) -> str:
    """The chat template's text for a request. A final assistant message is continued unless the
    request says otherwise (llama-server's assistant prefill)."""
    messages = S.message_dicts(req.messages)
    add_generation_prompt = req.add_generation_prompt
    continue_final = req.continue_final_message
    if "continue_final_message" not in req.model_fields_set and messages[-1]["role"] == "assistant":
        if len(messages) >= 2 and messages[-2]["role"] == "assistant":
            raise ApiError(400, "two or more assistant messages at the end of the conversation")
        continue_final, add_generation_prompt = True, False
    if continue_final and messages[-1]["role"] != "assistant":
        raise ApiError(400, "continue_final_message: the last message is not the assistant's")
    kwargs = {**state.settings.chat_template_kwargs, **req.chat_template_kwargs}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("messages", "add_generation_prompt")}
    try:
        return render_chat(state.model.tokenizer, state.settings.chat_template, messages,
                           add_generation_prompt, continue_final, **kwargs)  # fmt: skip
    except LlmrtError as exc:  # ChatError, ChatTemplateError
        raise ApiError(400, str(exc)) from None
