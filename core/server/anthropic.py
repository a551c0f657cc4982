"""Anthropic's Messages API: /v1/messages (and its SSE events) and /v1/messages/count_tokens.

A request is turned into the OpenAI chat request it means (system prompt, text blocks, tool_use
blocks as an assistant's tool_calls, tool_result blocks as tool messages, tools and tool_choice)
and served by the same machinery: the chat template, structured output for tools, the slots.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError

from llmrt.server import schemas as S
from llmrt.server.generation import (
    Result,
    events,
    results,
    tokens_of,
)
from llmrt.server.openai import chat_prompt, message_of, start_chat
from llmrt.server.slots import Task
from llmrt.server.state import ApiError, State

TEXT = {"type": "text", "text": ""}  # a text block as it starts
STOP_REASONS = {"eos": "end_turn", "limit": "max_tokens", "word": "stop_sequence"}


class MessagesRequest(S._Body):
    """POST /v1/messages (Anthropic's fields; llama-server's sampling fields also apply)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=-1)
    system: str | list[dict[str, Any]] | None = None
    messages: list[dict[str, Any]]
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class CountTokensRequest(S._Body):
    model: str | None = None
    system: str | list[dict[str, Any]] | None = None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


def _text(content: Any, where: str) -> str:
    """The text of a string or of a list of content blocks (text only)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content is a string or a list of blocks")
    parts = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "image":
            raise ApiError(400, "image input is not supported by this model")
        if kind != "text" or not isinstance(block.get("text"), str):
            raise ApiError(400, f"{where}: expected text blocks, got {kind!r}")
        parts.append(block["text"])
    return "\n\n".join(parts)


def openai_messages(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic's system prompt and messages as OpenAI chat messages."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text(system, "system")})
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}].role: user or assistant, got {role!r}")
        content = m.get("content")
        if not isinstance(content, list):
            out.append({"role": role, "content": _text(content, f"messages[{i}]")})
            continue
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text([block], f"messages[{i}]"))
            elif kind == "tool_use" and role == "assistant":
                fn = {"name": block.get("name"), "arguments": json.dumps(block.get("input", {}))}
                calls.append({"id": str(block.get("id", "")), "type": "function", "function": fn})
            elif kind == "tool_result" and role == "user":
                result = _text(block.get("content"), f"messages[{i}] tool_result")
                if block.get("is_error"):
                    result = f"Error: {result}"
                out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                            "content": result})  # fmt: skip
            elif kind == "thinking" and role == "assistant":
                thoughts.append(_thinking(block, i))  # the template may show it (Qwen3's does)
            elif kind in ("thinking", "redacted_thinking"):
                continue  # a user's, or encrypted: nothing to show
            elif kind == "image":
                raise ApiError(400, "image input is not supported by this model")
            else:
                raise ApiError(400, f"messages[{i}]: unknown content block {kind!r}")
        if texts or calls or thoughts or not content:
            message: dict[str, Any] = {"role": role, "content": "\n\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            if thoughts:
                message["reasoning_content"] = "\n\n".join(thoughts)
            out.append(message)
    return out


def _thinking(block: dict[str, Any], i: int) -> str:
    text = block.get("thinking", "")
    if not isinstance(text, str):
        raise ApiError(400, f"messages[{i}]: a thinking block's `thinking` is a string")
    return text


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for t in tools:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ApiError(400, 'tools: each is {"name": ..., "input_schema": {...}}')
        out.append({"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("input_schema", {"type": "object"})}})  # fmt: skip
    return out


def _tool_choice(choice: dict[str, Any] | None) -> Any:
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise ApiError(400, f"tool_choice: auto, any, tool or none, got {kind!r}")


def chat_request(body: MessagesRequest | CountTokensRequest) -> S.ChatRequest:
    """The OpenAI chat request an Anthropic request means (an empty conversation is an empty
    user turn, as llama-server accepts it)."""
    messages = openai_messages(body.system, body.messages)
    if not any(m["role"] != "system" for m in messages):
        messages.append({"role": "user", "content": ""})
    fields: dict[str, Any] = {"messages": messages, "tools": _tools(body.tools)}
    if isinstance(body, MessagesRequest):
        fields.update(
            max_tokens=body.max_tokens, stop=body.stop_sequences, temperature=body.temperature,
            top_p=body.top_p, top_k=body.top_k, stream=body.stream,
            tool_choice=_tool_choice(body.tool_choice),
        )  # fmt: skip
        if body.tool_choice and body.tool_choice.get("disable_parallel_tool_use"):
            fields["parallel_tool_calls"] = False
    try:
        return S.ChatRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        raise ApiError(400, f"{where}: {err.get('msg')}") from None


def _blocks(r: Result) -> tuple[list[dict[str, Any]], str]:
    """The reply's content blocks (text, then tool_use) and its stop_reason."""
    message, _ = message_of(r)
    blocks: list[dict[str, Any]] = []
    if message["content"]:
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls", []):
        fn = call["function"]
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                       "input": json.loads(fn["arguments"] or "{}")})  # fmt: skip
    stop = STOP_REASONS[r.data["stop_type"]]
    if message.get("tool_calls") and stop != "max_tokens":
        stop = "tool_use"
    if not blocks:
        blocks.append({"type": "text", "text": ""})
    return blocks, stop


def _usage(data: dict[str, Any]) -> dict[str, int]:
    cached = data["timings"]["cache_n"]
    return {"input_tokens": data["tokens_evaluated"], "output_tokens": data["tokens_predicted"],
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}  # fmt: skip


def add_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request) -> Response:
        """Anthropic's Messages API."""
        req = chat_request(body)
        tasks = await start_chat(state, req, S.stop_list(req.stop))
        head = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": state.alias}  # fmt: skip
        if req.stream:
            return StreamingResponse(_stream(state, tasks[0], head, len(tasks[0].prompt)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        done = await results(state, tasks, request)
        if done is None:
            return Response(status_code=499)
        r = done[0]
        blocks, stop = _blocks(r)
        word = r.data["stopping_word"] if r.data["stop_type"] == "word" else None
        return JSONResponse({**head, "content": blocks, "stop_reason": stop,
                             "stop_sequence": word, "usage": _usage(r.data)})  # fmt: skip

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountTokensRequest) -> JSONResponse:
        """How many tokens an Anthropic request's prompt takes."""
        text, _ = chat_prompt(state, chat_request(body))
        return JSONResponse({"input_tokens": len(tokens_of(state, text))})


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


async def _stream(
    state: State, task: Task, head: dict[str, Any], n_prompt: int
) -> AsyncIterator[str]:
    """Anthropic's SSE: message_start, the content blocks (text deltas as they come; with tools
    the reply is parsed once complete), message_delta, message_stop."""
    start = {**head, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": n_prompt, "output_tokens": 0}}  # fmt: skip
    yield _event("message_start", {"message": start})
    buffered = task.tools is not None and task.tools.active
    opened = False
    async for _, kind, data in events(state, [task], None):
        if kind == "token" and not buffered and data["content"]:
            if not opened:
                yield _event("content_block_start", {"index": 0, "content_block": TEXT})
                opened = True
            delta = {"type": "text_delta", "text": data["content"]}
            yield _event("content_block_delta", {"index": 0, "delta": delta})
        elif kind == "done":
            blocks, stop = _blocks(Result(task, data))
            if not buffered:  # the text went out as deltas
                blocks = [b for b in blocks if b["type"] != "text"]
                if opened:
                    yield _event("content_block_stop", {"index": 0})
                else:
                    blocks.insert(0, {"type": "text", "text": ""})
            index = 1 if opened else 0
            for block in blocks:
                if block["type"] == "text":
                    yield _event("content_block_start", {"index": index, "content_block": TEXT})
                    if block["text"]:
                        delta = {"type": "text_delta", "text": block["text"]}
                        yield _event("content_block_delta", {"index": index, "delta": delta})
                else:
                    empty = {**block, "input": {}}
                    yield _event("content_block_start", {"index": index, "content_block": empty})
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                    yield _event("content_block_delta", {"index": index, "delta": delta})
                yield _event("content_block_stop", {"index": index})
                index += 1
            word = data["stopping_word"] if data["stop_type"] == "word" else None
            usage = {"output_tokens": data["tokens_predicted"]}
            delta = {"stop_reason": stop, "stop_sequence": word}
            yield _event("message_delta", {"delta": delta, "usage": usage})
            yield _event("message_stop", {})
        elif kind == "error":
            error = {"type": "api_error", "message": data["message"]}
            yield _event("error", {"error": error})
