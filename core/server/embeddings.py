"""Embeddings, as llama-server serves them with `--embedding`: /embedding and /embeddings (its
own shape: a list of `{"index", "embedding": [vector, ...]}`) and OpenAI's /v1/embeddings.

The vectors are the model's final hidden states (after the output norm, before the lm head),
pooled as `--pooling` says (none, mean, cls, last; default: the GGUF's `{arch}.pooling_type`,
else mean) and normalized with the request's `embd_normalize` (default 2, Euclidean). Pooling
"none" gives every token's vector, unnormalized, and only on the native routes (OpenAI's has one
vector per input: 400 there, as llama-server).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, StrictInt, StrictStr

from llmrt.sampling import SamplingParams
from llmrt.server import schemas as S
from llmrt.server.generation import events, submit, token_ids
from llmrt.server.slots import Task
from llmrt.server.state import ApiError, State, scheduler_of


class EmbeddingRequest(S._Body):
    input: Any = None
    content: Any = None  # llama-server's native name for the input
    model: StrictStr | None = None
    encoding_format: StrictStr = "float"
    embd_normalize: StrictInt = Field(default=2, ge=-1, le=64)


def add_routes(app: FastAPI, state: State) -> None:
    @app.post("/embedding", include_in_schema=False)
    @app.post("/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        """llama-server's native embeddings: a list of {"index", "embedding": [vectors]}, one
        vector per input pooled, one per token with pooling none."""
        return await _embeddings(state, req, request, oai=False)

    @app.post("/v1/embeddings")
    async def embeddings_oai(req: EmbeddingRequest, request: Request) -> Response:
        """OpenAI's embeddings: {"object": "list", "data": [...], "usage"}; `encoding_format`
        base64 gives each vector's little-endian float32 bytes in base64."""
        return await _embeddings(state, req, request, oai=True)


async def _embeddings(state: State, req: EmbeddingRequest, request: Request, oai: bool) -> Response:
    pooling = state.pooling
    if not state.settings.embedding:
        raise ApiError(501, "This server does not support embeddings. Start it with "
                            "`--embeddings`", "not_supported_error")  # fmt: skip
    if req.input is not None:
        prompt = req.input
    elif req.content is not None:
        prompt, oai = req.content, False  # "content" is not OpenAI's: llama-server's shape
    else:
        raise ApiError(400, '"input" or "content" must be provided')
    if oai and pooling == "none":
        raise ApiError(400, "Pooling type 'none' is not OAI compatible. Please use a different "
                            "pooling type")  # fmt: skip
    if req.encoding_format not in ("float", "base64"):
        raise ApiError(400, "encoding_format: float or base64, got "
                            f"{req.encoding_format!r}")  # fmt: skip
    # a list holding token ids is ONE prompt; any other list has one prompt per element
    if isinstance(prompt, list) and not any(isinstance(p, int) for p in prompt):
        if not prompt:
            raise ApiError(400, '"input" must not be empty')
        prompts = [_tokens(state, p) for p in prompt]
    else:
        prompts = [_tokens(state, prompt)]
    sched = scheduler_of(state)
    for ids in prompts:
        if len(ids) > sched.n_ctx_slot:
            raise ApiError(
                400,
                f"input ({len(ids)} tokens) is too large to process: the context of a slot "
                f"holds {sched.n_ctx_slot} tokens (raise -c)",
                "exceed_context_size_error",
                n_prompt_tokens=len(ids),
                n_ctx=sched.n_ctx_slot,
            )
    tasks = [
        Task(prompt=ids, params=SamplingParams(), index=i, pooling=pooling,
             embd_normalize=req.embd_normalize, cache_prompt=False)
        for i, ids in enumerate(prompts)
    ]  # fmt: skip
    submit(state, tasks)
    done: dict[int, dict[str, Any]] = {}
    async for index, kind, data in events(state, tasks, request):
        if kind == "done":
            done[index] = data
        elif kind == "error":
            raise ApiError(500, data["message"], "server_error")
    if len(done) < len(tasks):
        return Response(status_code=499)  # the client hung up; nobody reads this
    if not oai:
        return JSONResponse([
            {"index": i, "embedding": done[i]["embedding"].tolist()} for i in range(len(tasks))
        ])  # fmt: skip
    data = []
    for i in range(len(tasks)):
        vector = done[i]["embedding"][0]
        item: dict[str, Any] = {"embedding": vector.tolist(), "index": i, "object": "embedding"}
        if req.encoding_format == "base64":
            raw = np.asarray(vector, "<f4").tobytes()
            item = {**item, "embedding": base64.b64encode(raw).decode("ascii"),
                    "encoding_format": "base64"}  # fmt: skip
        data.append(item)
    n_tokens = sum(done[i]["n_tokens"] for i in range(len(tasks)))
    return JSONResponse({
        "model": req.model if req.model is not None else state.alias,
        "object": "list",
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        "data": data,
    })  # fmt: skip


def _tokens(state: State, entry: Any) -> list[int]:
    """One input's tokens: what a /completion prompt may be (text, token ids, a mix,
    {"prompt_string": text}), or {"content": [{"type": "text", "text": ...}, ...]} (the texts
    joined; this model takes no images, audio or video)."""
    if isinstance(entry, dict) and "content" in entry:
        parts = entry["content"]
        if not isinstance(parts, list):
            raise ApiError(400, '"content" must be an array of {"type": "text", "text": ...}')
        texts = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image_url", "input_audio", "input_video", "video_url"):
                raise ApiError(400, f"content: {kind} is not supported: this model takes text")
            if kind != "text":
                raise ApiError(400, f"content: unsupported type {kind!r} (text only here)")
            text = part.get("text", "")
            if not isinstance(text, str):
                raise ApiError(400, "content: a text part's `text` is a string")
            texts.append(text)
        entry = "".join(texts)
    elif not isinstance(entry, str | list | dict) or isinstance(entry, bool):
        raise ApiError(400, "each input is a text, a list of token ids and texts, or an object "
                            'with "prompt_string" or "content"')  # fmt: skip
    ids = token_ids(state, entry)
    if not ids:
        raise ApiError(400, "Input content cannot be empty")
    return ids
