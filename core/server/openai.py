"""OpenAI's endpoints: /v1/models, /v1/completions, /v1/chat/completions, and llama-server's
chat helpers /apply-template and /chat/completions/input_tokens."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llmrt.errors import LlmrtError
from llmrt.server import schemas as S
from llmrt.server.chat import render as render_chat
from llmrt.server.generation import (
    Result,
    events,
    finish_reason,
    grammar_of,
    make_tasks,
    n_predict_of,
    native_result,
    prompts_of,
    results,
    schema_of_response_format,
    sse,
    stream_response,
    submit,
    tokens_of,
    total_usage,
)
from llmrt.server.slots import Task
from llmrt.server.state import ApiError, State, error_body
from llmrt.server.tools import (
    ToolRequest,
    grammar_text,
    parse_reply,
    prepare_messages,
    tool_request,
)

FINGERPRINT = "llmrt-0.1.0"


def add_routes(app: FastAPI, state: State) -> None:
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
                      "owned_by": "llmrt", "aliases": state.aliases, "tags": state.tags,
                      "meta": meta}],
        })  # fmt: skip

    @app.post("/v1/completions")
    async def completions(req: S.OAICompletionRequest, request: Request) -> Response:
        """OpenAI's text completion: one choice per prompt of a batch and per `n`."""
        prompts = prompts_of(state, req.prompt)
        n_probs = req.logprobs if req.logprobs is not None else None
        return await _run(state, req, request, prompts, "text", n_probs=n_probs)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    async def chat(req: S.ChatRequest, request: Request) -> Response:
        """OpenAI's chat completion: the messages through the model's chat template."""
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs to be true")
        text, tools = chat_prompt(state, req)
        if tools.active and req.logprobs and req.stream:
            raise ApiError(400, "logprobs are not streamed with tools")
        n_probs = (req.top_logprobs or 0) if req.logprobs else None
        return await _run(state, req, request, [tokens_of(state, text)], "chat", n_probs=n_probs,
                          tools=tools)  # fmt: skip

    @app.post("/apply-template")
    async def apply_template(req: S.ChatMessages) -> JSONResponse:
        """The prompt a chat request's messages make, without generating."""
        return JSONResponse({"prompt": chat_prompt(state, req)[0]})

    @app.post("/v1/chat/completions/input_tokens")
    @app.post("/chat/completions/input_tokens", include_in_schema=False)
    async def chat_input_tokens(req: S.ChatMessages) -> JSONResponse:
        """How many tokens a chat request's prompt takes."""
        n = len(tokens_of(state, chat_prompt(state, req)[0]))
        return JSONResponse({"input_tokens": n})


async def start_chat(state: State, req: Any, stop: list[str]) -> list[Task]:
    """One completion of a chat request as the other APIs take it (Anthropic's Messages,
    OpenAI's Responses): its template's prompt, tools and sampling, submitted to the scheduler."""
    text, tools = chat_prompt(state, req)
    prompt = tokens_of(state, text)
    options = await task_options(state, req, None, tools)
    n_predict = n_predict_of(state, req.max_tokens)
    tasks = make_tasks(state, req, [prompt], n_predict, stop, 1, **options)
    submit(state, tasks)
    return tasks


def chat_prompt(state: State, req: S.ChatMessages) -> tuple[str, ToolRequest]:
    """The chat template's text for a request, and its tools. A final assistant message is
    continued unless the request says otherwise (llama-server's assistant prefill)."""
    template = state.settings.chat_template or state.model.tokenizer.chat_template or ""
    tools = tool_request(req.tools, req.tool_choice, req.parallel_tool_calls, template)
    messages = prepare_messages(S.message_dicts(req.messages), tools)
    add_generation_prompt = req.add_generation_prompt
    continue_final = req.continue_final_message
    if "continue_final_message" not in req.model_fields_set and messages[-1]["role"] == "assistant":
        if len(messages) >= 2 and messages[-2]["role"] == "assistant":
            raise ApiError(400, "two or more assistant messages at the end of the conversation")
        continue_final, add_generation_prompt = True, False
    if continue_final and messages[-1]["role"] != "assistant":
        raise ApiError(400, "continue_final_message: the last message is not the assistant's")
    # --reasoning: llama-server's default (auto) lets a model think where its template allows
    thinking = {"enable_thinking": state.settings.reasoning != "off"}
    kwargs = {**thinking, **state.settings.chat_template_kwargs, **req.chat_template_kwargs}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("messages", "add_generation_prompt")}
    # llama-server's extra template variables: Llama 3.x templates read date_string,
    # firefunction-v2's datetime; its functions is the tools' JSON, as llama.cpp's own
    # firefunction-v2 handler wrote it ("" without tools, as llama-server's Jinja joins it)
    kwargs.setdefault("date_string", time.strftime("%d %b %Y"))
    kwargs.setdefault("datetime", time.strftime("%b %d %Y"))
    kwargs.setdefault("functions", json.dumps(tools.tools, indent=2) if tools.active else "")
    if tools.active and tools.format != "generic":  # the template writes them its own way
        kwargs["tools"] = tools.tools
    try:
        text = render_chat(state.model.tokenizer, state.settings.chat_template, messages,
                           add_generation_prompt, continue_final, **kwargs)  # fmt: skip
    except LlmrtError as exc:  # ChatError, ChatTemplateError
        raise ApiError(400, str(exc)) from None
    return text, tools


async def task_options(
    state: State, req: Any, n_probs: int | None, tools: ToolRequest | None
) -> dict[str, Any]:
    """The task fields a chat or completion request sets beyond sampling: logprobs, tools, and
    the grammar its output must match (its own, its response_format's, or its tools')."""
    options: dict[str, Any] = {}
    if n_probs is not None:  # logprobs asked: the chosen tokens' ones, and n_probs others
        options = {"want_probs": True, "n_probs": n_probs}
    schema = req.json_schema
    from_format = schema_of_response_format(req.response_format)
    if from_format is not None:
        schema = from_format  # OpenAI's field wins over llama-server's
    if tools is not None and tools.active:
        options["tools"] = tools
        tool_grammar = grammar_text(tools)
        if tool_grammar is not None:
            if req.grammar or schema is not None:
                raise ApiError(400, "a grammar, json_schema or response_format cannot be used "
                                    "with tools")  # fmt: skip
            grammar_kind, text = tool_grammar
            if grammar_kind == "json_schema":
                options["grammar"] = await grammar_of(state, json_schema=json.loads(text))
            else:
                options["grammar"] = await grammar_of(state, lark=text)
    if "grammar" not in options:
        options["grammar"] = await grammar_of(state, req.grammar, schema)
    return options


async def _run(
    state: State,
    req: Any,
    request: Request,
    prompts: list[list[int]],
    kind: str,
    n_probs: int | None,
    tools: ToolRequest | None = None,
) -> Response:
    asked = req.n_predict if req.n_predict is not None else req.max_tokens
    if kind == "chat" and req.max_completion_tokens is not None:
        asked = req.max_completion_tokens
    options = await task_options(state, req, n_probs, tools)
    tasks = make_tasks(state, req, prompts, n_predict_of(state, asked), S.stop_list(req.stop),
                       req.n, **options)  # fmt: skip
    submit(state, tasks)
    obj = "chat.completion" if kind == "chat" else "text_completion"
    head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": obj, "created": int(time.time()), "model": state.alias,
            "system_fingerprint": FINGERPRINT}  # fmt: skip
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        return stream_response(_chunks(state, tasks, kind, head, req.n, include_usage))
    done = await results(state, tasks, request)
    if done is None:
        return Response(status_code=499)  # the client hung up; nobody reads this
    out = {**head, "choices": [_choice(r, kind) for r in done],
           "usage": total_usage(done, req.n), "timings": done[0].data["timings"]}  # fmt: skip
    if done[0].task.verbose:
        out["__verbose"] = native_result(state, done[0].task, done[0].data, stream=False)
    return JSONResponse(out)


def _logprobs(task: Task, probs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return {"content": probs} if task.want_probs else None


def message_of(r: Result) -> tuple[dict[str, Any], str]:
    """The assistant's message (its tool calls parsed out) and the finish reason."""
    reason = finish_reason(r.data["stop_type"])
    message: dict[str, Any] = {"role": "assistant", "content": r.data["content"]}
    tools = r.task.tools
    if tools is not None and tools.active:
        content, calls = parse_reply(r.data["content"], tools)
        message["content"] = content
        if calls:
            message["tool_calls"] = calls
            if r.data["stop_type"] != "limit":
                reason = "tool_calls"
    return message, reason


def _choice(r: Result, kind: str) -> dict[str, Any]:
    reason = finish_reason(r.data["stop_type"])
    logprobs = _logprobs(r.task, r.probs)
    if kind == "chat":
        message, reason = message_of(r)
        return {"index": r.task.index, "message": message, "logprobs": logprobs,
                "finish_reason": reason}  # fmt: skip
    return {"index": r.task.index, "text": r.data["content"], "logprobs": logprobs,
            "finish_reason": reason}  # fmt: skip


async def _chunks(
    state: State,
    tasks: list[Task],
    kind: str,
    head: dict[str, Any],
    n_choices: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    chat = kind == "chat"
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def choice(index: int, text: str | None, reason: str | None, logprobs: Any = None) -> dict:
        delta = {"content": text} if text else {}
        body: dict[str, Any] = {"delta": delta} if chat else {"text": text or ""}
        return {"index": index, **body, "logprobs": logprobs, "finish_reason": reason}

    if chat:  # OpenAI's first chunk: the role
        for task in tasks:
            first = {"index": task.index, "delta": {"role": "assistant", "content": None},
                     "logprobs": None, "finish_reason": None}  # fmt: skip
            yield sse({**head, "choices": [first]})
    done: list[Result] = []
    async for index, ev, data in events(state, tasks, None):
        task = tasks[index]
        if ev == "progress":
            chunk = {**head, "choices": [choice(index, None, None)],
                     "prompt_progress": data["progress"]}  # fmt: skip
            if "timings" in data:
                chunk["timings"] = data["timings"]
            yield sse(chunk)
        elif ev == "token":
            if task.tools is not None and task.tools.active:
                continue  # the reply is parsed for tool calls when it is complete
            probs = data.get("completion_probabilities")
            if data["content"] or probs:
                logprobs = _logprobs(task, probs or [])
                chunk = {**head, "choices": [choice(index, data["content"], None, logprobs)]}
                if "timings" in data:
                    chunk["timings"] = data["timings"]
                yield sse(chunk)
        elif ev == "done":
            done.append(Result(task, data))
            reason = finish_reason(data["stop_type"])
            if task.tools is not None and task.tools.active:
                message, reason = message_of(done[-1])
                if message["content"]:
                    yield sse({**head, "choices": [choice(index, message["content"], None)]})
                calls = [{"index": k, **c} for k, c in enumerate(message.get("tool_calls", []))]
                if calls:
                    delta = {"index": index, "delta": {"tool_calls": calls}, "logprobs": None,
                             "finish_reason": None}  # fmt: skip
                    yield sse({**head, "choices": [delta]})
            yield sse({**head, "choices": [choice(index, None, reason)],
                       "timings": data["timings"]})  # fmt: skip
        else:
            yield sse(error_body(500, data["message"], "server_error"))
    if include_usage and len(done) == len(tasks):
        done.sort(key=lambda r: r.task.index)
        yield sse({**head, "choices": [], "usage": total_usage(done, n_choices),
                   "timings": done[-1].data["timings"]})  # fmt: skip
    yield "data: [DONE]\n\n"
