"""OpenAI tool calling: the tools into the prompt, the model's tool calls out of its reply, and
a grammar that makes it call one when `tool_choice` asks for it.

Each chat template's own format is used when the template renders `tools`:

- hermes (Hermes, Qwen 2.5, ChatML templates with tools): `<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>`, one block per call;
- llama3 (Llama 3.x): a JSON object `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or
  alone;
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.

A template that does not render tools (SmolLM2's, Gemma's, the built-in names) gets the generic
format, as llama-server's: the tools are described in the system message and the reply is JSON,
`{"tool_calls": [{"name": ..., "arguments": {...}}]}` or `{"response": "..."}`, always enforced by
a grammar (the model was not trained on it). With a native format, `tool_choice` `required` or a
named function makes a grammar enforce a call; `auto` lets the model choose and the reply is
parsed; `none` leaves the tools out.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from llmrt.server.state import ApiError

FORMATS = ("hermes", "llama3", "mistral", "generic")


def detect_format(template: str) -> str:
    """The tool-call format a chat template's text implies."""
    if "tools" not in template:
        return "generic"
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "ipython" in template or "<|start_header_id|>" in template:
        return "llama3"
    return "generic"


@dataclass
class ToolRequest:
    """A chat request's tools, as the server uses them."""

    tools: list[dict[str, Any]]
    choice: str  # auto | required | none | a function's name
    format: str
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"


def tool_request(
    tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None, template: str
) -> ToolRequest:
    """Check the request's `tools` and `tool_choice` (400 for a bad one)."""
    tools = tools or []
    names = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not (isinstance(t, dict) and t.get("type", "function") == "function"
                and isinstance(fn, dict) and isinstance(fn.get("name"), str)):  # fmt: skip
            raise ApiError(400, "tools: each is {\"type\": \"function\", \"function\": {\"name\": "
                                "..., \"parameters\": {...}}}")  # fmt: skip
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, dict):
            raise ApiError(400, f"tools: the parameters of {fn['name']} are not a JSON schema")
        names.append(fn["name"])
    if tool_choice is None:
        choice = "auto"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("auto", "required", "none"):
            raise ApiError(400, f"tool_choice: auto, required, none or a function, got "
                                f"{tool_choice!r}")  # fmt: skip
        choice = tool_choice
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        choice = tool_choice["function"].get("name")
        if choice not in names:
            raise ApiError(400, f"tool_choice names {choice!r}, which is not among the tools")
    else:
        raise ApiError(400, "tool_choice: auto, required, none or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}")  # fmt: skip
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice required needs tools")
    return ToolRequest(tools, choice, detect_format(template), parallel is not False)


def _functions(req: ToolRequest) -> list[dict[str, Any]]:
    fns = [t["function"] for t in req.tools]
    if req.choice not in ("auto", "required", "none"):
        fns = [f for f in fns if f["name"] == req.choice]
    return fns


def _call_schema(fn: dict[str, Any], args_key: str = "arguments") -> dict[str, Any]:
    params = fn.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, args_key: params},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def generic_schema(req: ToolRequest) -> dict[str, Any]:
    """The generic format's reply: tool calls, or (with auto) a plain response."""
    calls = {
        "type": "array",
        "items": _one_of([_call_schema(f) for f in _functions(req)]),
        "minItems": 1,
        **({} if req.parallel else {"maxItems": 1}),
    }
    with_calls = {"type": "object", "properties": {"tool_calls": calls},
                  "required": ["tool_calls"], "additionalProperties": False}  # fmt: skip
    if req.choice != "auto":
        return with_calls
    response = {"type": "object", "properties": {"response": {"type": "string"}},
                "required": ["response"], "additionalProperties": False}  # fmt: skip
    return {"anyOf": [with_calls, response]}


def grammar_text(req: ToolRequest) -> tuple[str, str] | None:
    """(kind, text) of the grammar the reply must match: ("json_schema", ...) or ("lark", ...);
    None when the model may write anything (a native format with auto)."""
    if req.format == "generic":
        return "json_schema", json.dumps(generic_schema(req))
    if req.choice == "auto":
        return None
    fns = _functions(req)
    if req.format == "llama3":
        schema = _one_of([_call_schema(f, "parameters") for f in fns])
        return "lark", f"start: %json {json.dumps(schema)}"
    schema = _one_of([_call_schema(f) for f in fns])
    if req.format == "mistral":
        array = {"type": "array", "items": schema, "minItems": 1,
                 **({} if req.parallel else {"maxItems": 1})}  # fmt: skip
        return "lark", f'start: "[TOOL_CALLS]" %json {json.dumps(array)}'
    block = f'"<tool_call>\\n" %json {json.dumps(schema)} "\\n</tool_call>"'
    more = ' ("\\n" call)*' if req.parallel else ""
    return "lark", f"start: call{more}\ncall: {block}"


def generic_system_prompt(req: ToolRequest) -> str:
    tools = json.dumps([t["function"] for t in req.tools], ensure_ascii=False)
    ask = ("You must call one or more of the tools." if req.choice != "auto"
           else "Call tools when they help; otherwise answer directly.")  # fmt: skip
    return (
        f"You can use these tools:\n{tools}\n{ask} Reply with JSON only: "
        '{"tool_calls": [{"name": "<tool name>", "arguments": {...}}]} to call tools'
        + (', or {"response": "<your answer>"} to answer.' if req.choice == "auto" else ".")
    )


def prepare_messages(messages: list[dict[str, Any]], req: ToolRequest) -> list[dict[str, Any]]:
    """The messages for the template: tool-call arguments as objects (templates write them with
    tojson); in the generic format, the tools described in the system message and earlier tool
    calls written as the JSON the model is asked for."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls")
        if calls:
            parsed = []
            for c in calls:
                fn = dict(c.get("function", {}))
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        raise ApiError(400, "tool_calls: arguments are not JSON") from None
                parsed.append({**c, "function": fn})
            m["tool_calls"] = parsed
            if req.format == "generic":
                body = [{"name": c["function"].get("name"), "arguments": c["function"].get(
                    "arguments", {})} for c in parsed]  # fmt: skip
                m["content"] = json.dumps({"tool_calls": body}, ensure_ascii=False)
                del m["tool_calls"]
        out.append(m)
    if req.format == "generic" and req.active:
        prompt = generic_system_prompt(req)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _call(name: Any, arguments: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name:
        return None
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


def _json_values(text: str) -> list[tuple[int, int, Any]]:
    """(start, end, value) of the JSON values that start at `{` or `[` in text, left to right."""
    decoder = json.JSONDecoder()
    out = []
    i = 0
    while True:
        m = re.search(r"[{\[]", text[i:])
        if m is None:
            return out
        start = i + m.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        out.append((start, end, value))
        i = end


def parse_reply(text: str, req: ToolRequest) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply in the request's format. Text that is not a well-formed
    call stays content."""
    if req.format == "generic":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text, []  # cut by the token limit: what was written
        if isinstance(value, dict) and "response" in value:
            return str(value["response"]), []
        if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
            calls = [_call(c.get("name"), c.get("arguments")) for c in value["tool_calls"]
                     if isinstance(c, dict)]  # fmt: skip
            return None, [c for c in calls if c]
        return text, []
    calls: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    if req.format == "hermes":
        for m in re.finditer(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.DOTALL):
            try:
                value = json.loads(m.group(1))
            except json.JSONDecodeError:
                continue
            call = _call(value.get("name"), value.get("arguments")) if isinstance(
                value, dict) else None  # fmt: skip
            if call:
                calls.append(call)
                spans.append(m.span())
    elif req.format == "mistral":
        at = text.find("[TOOL_CALLS]")
        if at >= 0:
            for _start, end, value in _json_values(text[at:])[:1]:
                items = value if isinstance(value, list) else [value]
                found = [_call(v.get("name"), v.get("arguments")) for v in items
                         if isinstance(v, dict)]  # fmt: skip
                if found and all(found):
                    calls += found
                    spans.append((at, at + end))
    else:  # llama3: the whole reply (after <|python_tag|>) is one call
        body = text.replace("<|python_tag|>", "").strip()
        values = _json_values(body)
        if len(values) == 1 and values[0][0] == 0 and values[0][1] == len(body):
            value = values[0][2]
            if isinstance(value, dict):
                args = value.get("parameters", value.get("arguments"))
                call = _call(value.get("name"), args)
                if call:
                    calls.append(call)
                    spans.append((0, len(text)))
    if not calls:
        return text, []
    rest = text
    for start, end in reversed(spans):
        rest = rest[:start] + rest[end:]
    rest = rest.strip()
    return (rest or None), calls
