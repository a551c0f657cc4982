"""Request bodies of the server's endpoints, as pydantic models (they also make the OpenAPI schema).

Types are strict: a string where a number belongs is a 400, not a silent conversion (llama-server
logs a warning and falls back to the default; we prefer to say so). Fields a model does not know
are ignored, as llama-server and OpenAI-compatible servers do, so clients that send extra OpenAI
fields keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1

NPredict = Annotated[int, Field(ge=-1, le=INT32_MAX)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Finite = Annotated[float, Field(ge=-1e9, le=1e9)]
Seed = Annotated[int, Field(ge=-1, le=SEED_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """`"temperature": null` means the default, as OpenAI's API reads it."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Sampling(_Body):
    """The sampling fields of llama-server's /completion (and its extensions to OpenAI's).

    A field the request leaves out takes the server's default (`llmrt serve --temp ...`); the
    defaults written here are those of a server started without sampling flags."""

    temperature: Annotated[float, Field(ge=-1e9, le=1e9)] = 0.8
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] = 40
    top_p: Prob = 0.95
    min_p: Prob = 0.05
    typical_p: Prob = 1.0
    repeat_penalty: Annotated[float, Field(gt=0.0, le=1e9)] = 1.0
    repeat_last_n: Annotated[int, Field(ge=-1, le=INT32_MAX)] = 64
    presence_penalty: Finite = 0.0
    frequency_penalty: Finite = 0.0
    top_n_sigma: Finite = -1.0
    xtc_probability: Prob = 0.0
    xtc_threshold: Prob = 0.1
    dynatemp_range: Annotated[float, Field(ge=0.0, le=1e9)] = 0.0
    dynatemp_exponent: Annotated[float, Field(ge=0.0, le=1e9)] = 1.0
    min_keep: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    seed: Seed = -1
    n_probs: Annotated[int, Field(ge=0, le=100)] = 0
    post_sampling_probs: bool = False
    cache_prompt: bool = True
    n_keep: Annotated[int, Field(ge=-1, le=INT32_MAX)] = Field(
        0, description="With --context-shift: prompt tokens kept when the context is full "
        "(-1: all of them)."
    )  # fmt: skip
    n_discard: Annotated[int, Field(ge=0, le=INT32_MAX)] = Field(
        0, description="With --context-shift: tokens dropped at a shift (0: half of those after "
        "n_keep)."
    )  # fmt: skip
    id_slot: Annotated[int, Field(ge=-1, le=INT32_MAX)] = -1
    ignore_eos: bool = False
    logit_bias: list[Any] | dict[str, Any] | None = Field(
        None, description="[[token, bias], ...] or {\"token\": bias}: a token id or a text (each "
        "of its tokens), a bias a number or false (banned)."
    )  # fmt: skip
    n_predict: NPredict | None = Field(
        None, description="Tokens to generate; default: the server's -n; -1: until end or full."
    )
    return_progress: bool = Field(False, description="Stream prompt_progress while reading.")
    timings_per_token: bool = Field(False, description="Timings in every streamed chunk.")
    grammar: StrictStr | None = Field(None, description="A GBNF grammar the output must match.")
    json_schema: dict[str, Any] | None = Field(
        None, description="A JSON schema the output must match ({} is any object)."
    )
    verbose: bool = Field(False, description="Add `__verbose` (the prompt as the model read it).")


# One prompt: text, token ids, both mixed, or {"prompt_string": text}; a list of prompts is a batch
SubPrompt = StrictStr | list[StrictInt | StrictStr] | dict[str, Any]
Prompt = StrictStr | dict[str, Any] | list[StrictInt | StrictStr | list[StrictInt | StrictStr] |
                                            dict[str, Any]]  # fmt: skip
Choices = Annotated[int, Field(ge=1, le=INT32_MAX)]


class CompletionRequest(Sampling):
    """POST /completion: llama-server's native completion."""

    prompt: Prompt = Field(
        description="Text, or token ids, or a list mixing token ids and text pieces; a list "
        "without token ids at its top is a batch of such prompts."
    )
    stream: bool = False
    stop: list[StrictStr] = Field(default_factory=list, max_length=16)
    return_tokens: bool = False
    n_cmpl: Choices | None = Field(None, description="Completions per prompt (alias: n).")
    n: Choices = 1
    response_fields: list[StrictStr] = Field(
        default_factory=list, description="Only these fields; `a/b` is a's field b, as `a/b`."
    )


class TokenizeRequest(_Body):
    content: StrictStr
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[TokenId]


class StreamOptions(_Body):
    include_usage: bool = False


StopField = StrictStr | list[StrictStr] | None


class OAICompletionRequest(Sampling):
    """POST /v1/completions."""

    model: StrictStr | None = None
    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopField = None
    n: Choices = 1
    echo: Literal[False] = False
    logprobs: Annotated[int, Field(ge=0, le=100)] | None = None
    response_format: dict[str, Any] | None = None


class ContentPart(_Body):
    type: Literal["text"]
    text: StrictStr


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls
    tool_call_id: StrictStr | None = None  # a tool's result: the call it answers
    name: StrictStr | None = None
    reasoning_content: StrictStr | None = None  # earlier thinking (a template may show it)

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self


class ChatMessages(_Body):
    """The messages of a chat request and how the template renders them."""

    messages: list[Message] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = Field(
        False, description="Render the last (assistant) message as unfinished, to be continued. "
        "Default: true when the last message is the assistant's (llama-server's prefill)."
    )  # fmt: skip
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    tools: list[Any] | None = Field(None, description="OpenAI's function tools.")
    tool_choice: StrictStr | dict[str, Any] | None = Field(
        None, description="auto (default), required, none, or {\"type\": \"function\", "
        "\"function\": {\"name\": ...}}."
    )  # fmt: skip
    parallel_tool_calls: bool | None = None


class ChatRequest(Sampling, ChatMessages):
    """POST /v1/chat/completions."""

    model: StrictStr | None = None
    max_tokens: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopField = None
    n: Choices = 1
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = Field(
        None, description='OpenAI\'s {"type": "text" | "json_object" | "json_schema", ...}.'
    )


def stop_list(stop: StopField) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def message_dicts(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages for the chat template: text parts joined by a blank line (as llama-server)."""
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "\n\n".join(p.text for p in content)
        d: dict[str, Any] = {"role": m.role, "content": content or ""}
        if m.tool_calls:
            d["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out
