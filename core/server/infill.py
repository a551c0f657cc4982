"""/infill: fill-in-the-middle with the model's FIM tokens (from the GGUF), as llama-server:

    [FIM_REP]myproject\\n [FIM_SEP]file\\n extra text ... [FIM_SEP]filename\\n
    [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]

The repository and file separators are used when the vocabulary has them (otherwise extra
chunks are set apart by a "--- snippet ---" line). The prefix keeps its last tokens, up to 3/4 of
a batch; the suffix its first, up to the rest of the batch; the extra chunks fill what the
context has left after a batch and twice the tokens to generate.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from llmrt.server import schemas as S
from llmrt.server.generation import (
    grammar_of,
    make_tasks,
    n_predict_of,
    native_result,
    results,
    stream_response,
    submit,
)
from llmrt.server.state import ApiError, State, scheduler_of

SNIPPET = "\n\n--- snippet ---\n\n"


class ExtraChunk(S._Body):
    filename: S.StrictStr = "tmp"
    text: S.StrictStr


class InfillRequest(S.Sampling):
    """POST /infill: llama-server's fill-in-the-middle."""

    input_prefix: S.StrictStr = ""
    input_suffix: S.StrictStr = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list)
    prompt: S.StrictStr = Field("", description="Text the middle starts with.")
    stream: bool = False
    stop: list[S.StrictStr] = Field(default_factory=list, max_length=16)
    return_tokens: bool = False


def fim_tokens(tokenizer: Any) -> dict[str, int | None]:
    return {k: tokenizer.vocab.special.get(f"fim_{k}") for k in ("pre", "suf", "mid", "rep", "sep")}


def infill_prompt(
    tokenizer: Any,
    prefix: str,
    suffix: str,
    prompt: str,
    extra: list[tuple[str, str]],
    n_batch: int,
    n_ctx: int,
    n_predict: int,
) -> list[int]:
    """The token ids of a fill-in-the-middle request (see the module's docstring)."""
    fim = fim_tokens(tokenizer)
    missing = [k for k in ("pre", "suf", "mid") if fim[k] is None]
    if missing:
        raise ApiError(501, f"infill is not supported by this model: it has no FIM "
                            f"{'/'.join(missing)} token", "not_supported_error")  # fmt: skip

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special=False, parse_special=False)

    head: list[int] = []
    if fim["rep"] is not None:
        head += [fim["rep"], *encode("myproject\n")]
    for filename, text in extra:
        head += (
            [fim["sep"], *encode(filename + "\n")] if fim["sep"] is not None else encode(SNIPPET)
        )
        head += encode(text)
    if fim["sep"] is not None:
        head += [fim["sep"], *encode("filename\n")]
    middle = encode(prompt)
    before = encode(prefix)[-(3 * (n_batch // 4)) :] if n_batch >= 4 else []
    after = encode(suffix)[: max(0, n_batch // 4 - (2 + len(middle)))]
    n_head = max(0, n_ctx - n_batch - 2 * max(n_predict, 0))
    head = head[len(head) - n_head :] if n_head else []
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    return [*head, *bos, fim["pre"], *before, *middle, fim["suf"], *after, fim["mid"]]


def add_routes(app: FastAPI, state: State) -> None:
    @app.post("/infill")
    async def infill(req: InfillRequest, request: Request) -> Response:
        """Fill in the middle between input_prefix and input_suffix (with input_extra files)."""
        sched = scheduler_of(state)
        n_predict = n_predict_of(state, req.n_predict)
        extra = [(c.filename, c.text) for c in req.input_extra]
        n_ctx = sched.n_ctx_slot
        prompt = infill_prompt(state.model.tokenizer, req.input_prefix, req.input_suffix,
                               req.prompt, extra, sched.n_batch, n_ctx, n_predict)  # fmt: skip
        if len(prompt) > sched.n_ctx_slot:
            raise ApiError(400, f"the request exceeds the available context size: the prompt "
                                f"has {len(prompt)} tokens, the context of a slot holds "
                                f"{sched.n_ctx_slot}", "exceed_context_size_error",
                           n_prompt_tokens=len(prompt), n_ctx=sched.n_ctx_slot)  # fmt: skip
        grammar = await grammar_of(state, req.grammar, req.json_schema)
        tasks = make_tasks(state, req, [prompt], n_predict, req.stop, 1,
                           return_tokens=req.return_tokens, grammar=grammar)  # fmt: skip
        submit(state, tasks)
        if req.stream:
            from llmrt.server.native import chunks

            return stream_response(chunks(state, tasks))
        done = await results(state, tasks, request)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(native_result(state, done[0].task, done[0].data, stream=False))
