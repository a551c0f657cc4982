"""OpenAI tool calling: formats found from the template, replies parsed into tool_calls, and
calls enforced by a grammar when tool_choice asks for one."""

from __future__ import annotations

import json

import pytest
from server_helpers import sse_events

from llmrt.server.state import ApiError
from llmrt.server.tools import detect_format, parse_reply, tool_request

pytest.importorskip("llguidance")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": NO_ARGS}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

HERMES = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<tool_call>{% endif %}"
LLAMA3 = "<|start_header_id|>{% if tools %}ipython{% endif %}"
MISTRAL = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"


def req(fmt_template: str, choice="auto", tools=(WEATHER,)):
    return tool_request(list(tools), choice, None, fmt_template)


@pytest.mark.parametrize(
    ("template", "fmt"),
    [(HERMES, "hermes"), (LLAMA3, "llama3"), (MISTRAL, "mistral"), ("{{ x }}", "generic")],
)
def test_format_from_the_template(template, fmt):
    assert detect_format(template) == fmt


def test_parse_hermes():
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '\n</tool_call>')  # fmt: skip
    content, calls = parse_reply(text, req(HERMES))
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")


def test_parse_llama3_and_mistral():
    content, calls = parse_reply('<|python_tag|>{"name": "get_weather", "parameters": '
                                 '{"city": "Oslo"}}', req(LLAMA3))  # fmt: skip
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    text = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}, ' \
           '{"name": "get_time", "arguments": {}}]'  # fmt: skip
    content, calls = parse_reply(text, req(MISTRAL, tools=(WEATHER, TIME)))
    assert content is None and [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]


def test_plain_text_stays_content():
    for template in (HERMES, LLAMA3, MISTRAL):
        assert parse_reply("Paris is sunny.", req(template)) == ("Paris is sunny.", [])
    # a JSON object that is not a call is content too
    assert parse_reply('{"city": "x"}', req(LLAMA3)) == ('{"city": "x"}', [])


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([{"type": "function"}], "auto", "tools"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
        ([], "required", "needs tools"),
    ],
)
def test_bad_tools_are_400(tools, choice, message):
    with pytest.raises(ApiError) as err:
        tool_request(tools, choice, None, HERMES)
    assert err.value.code == 400 and message in err.value.message


@pytest.fixture(scope="module")
def client(live_server):
    """A server whose slot holds the tools' descriptions: 1024 tokens."""
    import httpx

    srv = live_server(n_ctx=1024, n_parallel=1)
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c


def chat(client, **body):
    r = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 60, **body},
                    timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_required_tool_call_generic_format(client):
    """SmolLM2's template has no tools: the generic JSON format, enforced by a grammar."""
    choice = chat(client, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0, seed=4,
                  parallel_tool_calls=False)  # fmt: skip
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    for call in choice["message"]["tool_calls"]:
        assert call["function"]["name"] in ("get_weather", "get_time")
        args = json.loads(call["function"]["arguments"])
        if call["function"]["name"] == "get_weather":
            assert isinstance(args["city"], str)


def test_named_tool_choice(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    choice = chat(client, tools=[WEATHER, TIME], tool_choice=named, temperature=0,
                  parallel_tool_calls=False)  # fmt: skip
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"]


def test_auto_answers_or_calls_and_none_leaves_tools_out(client):
    choice = chat(
        client, tools=[WEATHER], tool_choice="auto", temperature=0, parallel_tool_calls=False
    )
    message = choice["message"]
    assert (message.get("tool_calls") and choice["finish_reason"] == "tool_calls") or (
        isinstance(message["content"], str) and not message.get("tool_calls")
    )
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "none"}
    assert "get_weather" not in client.post("/apply-template", json=body).json()["prompt"]
    body["tool_choice"] = "auto"
    assert "get_weather" in client.post("/apply-template", json=body).json()["prompt"]


def test_tool_calls_stream(client):
    body = {"messages": ASK, "max_tokens": 60, "tools": [WEATHER], "tool_choice": "required",
            "stream": True, "temperature": 0, "parallel_tool_calls": False}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    deltas = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])]
    assert deltas and deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    assert json.loads("".join(d["function"]["arguments"] for d in deltas))["city"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_conversation_with_tool_results(client):
    """An assistant's tool call and the tool's result go back through the template."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]  # fmt: skip
    body = {"messages": messages, "tools": [WEATHER]}
    prompt = client.post("/apply-template", json=body).json()["prompt"]
    assert "sunny, 21 C" in prompt and '"city": "Paris"' in prompt
    choice = chat(client, messages=messages, tools=[WEATHER], max_tokens=8, temperature=0)
    assert choice["message"]["role"] == "assistant"
