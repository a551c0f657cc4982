"""llama-server's own endpoints: /completion, /tokenize, /detokenize, /props, /slots (and slot
save, restore and erase), /metrics, /health and the web UI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from llmrt.server import schemas as S
from llmrt.server.generation import (
    events,
    generation_settings,
    grammar_of,
    make_tasks,
    n_predict_of,
    native_result,
    pick_fields,
    prompts_of,
    results,
    settings_of,
    sse,
    stream_response,
    submit,
)
from llmrt.server.slots import SlotAction
from llmrt.server.state import ApiError, State, error_body, error_response, scheduler_of


def add_routes(app: FastAPI, state: State) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        if not state.settings.ui:
            return error_response(404, "File Not Found", "not_found_error")
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

    @app.post("/completion")
    @app.post("/completions", include_in_schema=False)
    async def completion(req: S.CompletionRequest, request: Request) -> Response:
        """llama-server's completion: text or token ids in, text (or SSE chunks) out. A batch of
        prompts, or `n_cmpl` > 1, answers a list (SSE chunks carry their `index`)."""
        prompts = prompts_of(state, req.prompt)
        n = req.n_cmpl if req.n_cmpl is not None else req.n
        n_predict = n_predict_of(state, req.n_predict)
        grammar = await grammar_of(state, req.grammar, req.json_schema)
        tasks = make_tasks(state, req, prompts, n_predict, req.stop, n,
                           return_tokens=req.return_tokens, grammar=grammar)  # fmt: skip
        submit(state, tasks)
        if req.stream:
            return stream_response(chunks(state, tasks))
        done = await results(state, tasks, request)
        if done is None:
            return Response(status_code=499)  # the client hung up; nobody reads this
        outs = []
        for r in done:
            out = native_result(state, r.task, r.data, stream=False)
            if r.task.verbose:
                out["__verbose"] = dict(out)
            outs.append(pick_fields(out, req.response_fields) if req.response_fields else out)
        return JSONResponse(outs[0] if len(outs) == 1 else outs)

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
        sched = scheduler_of(state)
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
        out = []
        for s in scheduler_of(state).slots:
            task = s.task
            slot: dict[str, Any] = {
                "id": s.id,
                "id_task": task.id if task is not None else -1,
                "n_ctx": s.n_ctx,
                "is_processing": task is not None,
                "tokens_cached": len(s.cache),
                "next_token": [{
                    "has_next_token": task is not None,
                    "n_remain": task.n_predict - s.n_decoded
                    if task is not None and task.n_predict >= 0 else -1,
                    "n_decoded": s.n_decoded if task is not None else 0,
                }],
            }  # fmt: skip
            if task is not None:  # an idle slot has no request's settings (as llama-server)
                slot["params"] = settings_of(task, s.n_ctx)
            out.append(slot)
        return JSONResponse(out)

    @app.post("/slots/{id_slot}")
    async def slot_action(id_slot: str, request: Request, action: str = "") -> JSONResponse:
        """llama-server's slot actions, with --slot-save-path: `save` writes the slot's KV cache
        and tokens to the file named by the body's `filename` in that folder, `restore` reads
        one back (a later request sharing its prefix reuses it), `erase` empties the slot."""
        folder = state.settings.slot_save_path
        if not folder:
            raise ApiError(501, "This server does not support slots action. Start it with "
                                "`--slot-save-path`", "not_supported_error")  # fmt: skip
        sched = scheduler_of(state)
        if not id_slot.isdigit() or int(id_slot) >= len(sched.slots):
            raise ApiError(400, f"Invalid slot ID {id_slot!r}: the server has "
                                f"{len(sched.slots)} slots")  # fmt: skip
        if action not in ("save", "restore", "erase"):
            raise ApiError(400, f"Invalid action {action!r}: save, restore or erase")
        job = SlotAction(action, int(id_slot))
        if action != "erase":
            try:
                body = json.loads(await request.body() or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "the body is not JSON") from None
            filename = body.get("filename") if isinstance(body, dict) else None
            if not isinstance(filename, str) or not valid_filename(filename):
                raise ApiError(400, f"Invalid filename {filename!r}: a file name in "
                                    "--slot-save-path, without folders")  # fmt: skip
            job.path = Path(folder) / filename
            if job.path.resolve().parent != Path(folder).resolve():  # a link out of the folder
                raise ApiError(400, f"Invalid filename {filename!r}: it leads out of "
                                    "--slot-save-path")  # fmt: skip
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        sched.act(job)
        try:
            return JSONResponse(await job.future)
        except FileNotFoundError:
            raise ApiError(400, f"Unable to restore slot: no file {job.path.name!r} in "
                                "--slot-save-path") from None  # fmt: skip
        except OSError as exc:
            raise ApiError(500, f"Unable to {action} slot: {exc.strerror or exc}",
                           "server_error") from None  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - LlmrtError: the file, not the server
            raise ApiError(400, f"Unable to {action} slot: {exc}") from None

    @app.get("/metrics")
    async def metrics() -> Response:
        if not state.settings.metrics:
            return error_response(501, "This server does not support metrics endpoint. "
                                  "Start it with `--metrics`", "not_supported_error")  # fmt: skip
        from llmrt.server.metrics import render

        text, content_type = render(scheduler_of(state))
        response = Response(text, media_type=content_type)
        # llama-server's spelling (kept by `llmrt serve`'s h11 server)
        response.raw_headers.append((b"Process-Start-Time-Unix", str(state.t_start).encode()))
        return response


async def chunks(state: State, tasks: list) -> AsyncIterator[str]:
    """/completion's SSE: a chunk per token (and per prompt chunk read, with return_progress),
    then each task's final object."""
    n_gen = [0] * len(tasks)
    async for index, kind, data in events(state, tasks, None):
        task = tasks[index]
        head = {"index": index, "stop": False, "tokens_evaluated": len(task.prompt)}
        if kind == "progress":
            chunk = {**head, "content": "", "tokens": [], "tokens_predicted": 0,
                     "prompt_progress": data["progress"]}  # fmt: skip
            if "timings" in data:
                chunk["timings"] = data["timings"]
            yield sse(chunk)
        elif kind == "token":
            n_gen[index] += 1
            yield sse({**head, **data, "tokens_predicted": n_gen[index]})
        elif kind == "done":
            yield sse(native_result(state, task, data, stream=True))
        else:
            yield sse(error_body(500, data["message"], "server_error"))


FORBIDDEN = set(':*?"<>|/\\') | {"\uff0e", "\u2215", "\u2216", "\ufffd", "\ufeff"}


def valid_filename(name: str) -> bool:
    """llama.cpp's fs_validate_filename (no folders): a plain file name, nothing that climbs out
    of the folder or means something else on another system."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > 255:
        return False
    for c in name:
        o = ord(c)
        if o <= 0x1F or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF or c in FORBIDDEN:
            return False
    if name[0] == " " or name[-1] in " .":
        return False
    return ".." not in name and name != "."
