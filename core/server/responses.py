"""OpenAI's Responses API (/v1/responses, text in and out): a request is served as the chat
request it means (`instructions` as the system message, `input` as the conversation), replies
are a `response` object, streams its typed events (with llama-server's `prompt_progress` and
`timings` when asked)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError

from llmrt.server import schemas as S
from llmrt.server.generation import events, results
from llmrt.server.openai import start_chat
from llmrt.server.slots import Task
from llmrt.server.state import ApiError, State


class ResponsesRequest(S._Body):
    """POST /v1/responses (text only; llama-server's timings_per_token and return_progress)."""

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=-1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stream: bool = False
    timings_per_token: bool = False
    return_progress: bool = False
    tools: list[Any] | None = None


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content is text or a list of text parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise ApiError(400, f"{where}: only text parts are supported, got {kind!r}")
        parts.append(part["text"])
    return "\n\n".join(parts)


def chat_request(body: ResponsesRequest) -> S.ChatRequest:
    if body.tools:
        raise ApiError(400, "tools are not supported on /v1/responses yet: use chat completions")
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
    else:
        for i, item in enumerate(body.input):
            role = item.get("role")
            if item.get("type", "message") != "message" or role not in (
                "system", "developer", "user", "assistant"):  # fmt: skip
                raise ApiError(400, f"input[{i}]: a message with a role, got {item!r:.80}")
            messages.append({"role": role, "content": _text(item.get("content"), f"input[{i}]")})
    fields = {"messages": messages, "max_tokens": body.max_output_tokens,
              "temperature": body.temperature, "top_p": body.top_p, "stream": body.stream,
              "timings_per_token": body.timings_per_token,
              "return_progress": body.return_progress}  # fmt: skip
    try:
        return S.ChatRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ApiError(400, f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _message(msg_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"type": "message", "id": msg_id, "status": status, "role": "assistant",
            "content": [part] if status == "completed" else []}  # fmt: skip


def _response(head: dict[str, Any], msg_id: str, data: dict[str, Any] | None) -> dict[str, Any]:
    if data is None:
        return {**head, "status": "in_progress", "output": [], "usage": None}
    cut = data["stop_type"] == "limit"
    n_in, n_out = data["tokens_evaluated"], data["tokens_predicted"]
    usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
             "input_tokens_details": {"cached_tokens": data["timings"]["cache_n"]},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    return {**head, "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "output": [_message(msg_id, data["content"], "completed")], "usage": usage}  # fmt: skip


def add_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/responses")
    @app.post("/responses", include_in_schema=False)
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        """OpenAI's Responses API, text only."""
        req = chat_request(body)
        tasks = await start_chat(state, req, [])
        head = {"id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response",
                "created_at": int(time.time()), "model": state.alias}  # fmt: skip
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(_stream(state, tasks[0], head, msg_id),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        done = await results(state, tasks, request)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(_response(head, msg_id, done[0].data))


async def _stream(
    state: State, task: Task, head: dict[str, Any], msg_id: str
) -> AsyncIterator[str]:
    seq = iter(range(1 << 30))

    def event(kind: str, **data: Any) -> str:
        body = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"

    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=_response(head, msg_id, None))
    yield event("response.in_progress", response=_response(head, msg_id, None))
    started = False
    text = ""
    async for _, kind, data in events(state, [task], None):
        if kind == "progress":
            extra = {"timings": data["timings"]} if "timings" in data else {}
            yield event("response.in_progress", response=_response(head, msg_id, None),
                        prompt_progress=data["progress"], **extra)  # fmt: skip
            continue
        if not started and kind in ("token", "done"):
            started = True
            yield event("response.output_item.added", output_index=0,
                        item=_message(msg_id, "", "in_progress"))  # fmt: skip
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", **where, part=part)
        if kind == "token" and data["content"]:
            text += data["content"]
            extra = {"timings": data["timings"]} if "timings" in data else {}
            yield event("response.output_text.delta", **where, delta=data["content"], **extra)
        elif kind == "done":
            yield event("response.output_text.done", **where, text=text)
            part = {"type": "output_text", "text": text, "annotations": []}
            yield event("response.content_part.done", **where, part=part)
            yield event("response.output_item.done", output_index=0,
                        item=_message(msg_id, text, "completed"))  # fmt: skip
            final = _response(head, msg_id, {**data, "content": text})
            yield event("response.completed", response=final, timings=data["timings"])
        elif kind == "error":
            yield event("error", message=data["message"], code="server_error")
