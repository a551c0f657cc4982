"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) on the chat machinery."""

from __future__ import annotations

import json

import httpx
import pytest
from server_helpers import sse_events

from llmrt.server.anthropic import openai_messages
from llmrt.server.state import ApiError

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                     "required": ["city"], "additionalProperties": False},
}  # fmt: skip
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def srv(live_server):
    return live_server(n_ctx=1024, n_parallel=1)


def post(srv, path, body):
    return httpx.post(srv.url + path, json=body, timeout=120)


def test_reply_matches_the_openai_chat_reply(srv):
    messages = [{"role": "user", "content": "Say hello"}]
    r = post(srv, "/v1/messages", {"max_tokens": 6, "messages": messages, **GREEDY})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "message" and out["role"] == "assistant" and out["id"].startswith("msg_")
    assert out["content"][0]["type"] == "text" and "timings" not in out
    assert out["stop_reason"] in ("end_turn", "max_tokens")
    oai = post(srv, "/v1/chat/completions", {"max_tokens": 6, "messages": messages, **GREEDY})
    oai = oai.json()
    assert out["content"][0]["text"] == oai["choices"][0]["message"]["content"]
    usage = out["usage"]
    assert usage["input_tokens"] == oai["usage"]["prompt_tokens"]
    assert usage["output_tokens"] == oai["usage"]["completion_tokens"]
    assert isinstance(usage["cache_read_input_tokens"], int)


def test_system_and_blocks_make_the_same_prompt_as_openai(srv):
    body = {"system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                      {"type": "text", "text": "there"}]},
                         {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "How are you?"}]}  # fmt: skip
    count = post(srv, "/v1/messages/count_tokens", body).json()
    assert set(count) == {"input_tokens"}
    same = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nthere"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"}]  # fmt: skip
    want = post(srv, "/chat/completions/input_tokens", {"messages": same}).json()["input_tokens"]
    assert count["input_tokens"] == want


def test_stop_sequence(srv):
    ask = [{"role": "user", "content": "Count: 1, 2"}]
    first = post(srv, "/v1/messages", {"max_tokens": 8, **GREEDY, "messages": ask})
    text = first.json()["content"][0]["text"]
    word = text.strip()[:2] if len(text.strip()) >= 2 else None
    if word is None:
        pytest.skip("the model wrote nothing to stop on")
    body = {"max_tokens": 8, **GREEDY, "stop_sequences": [word],
            "messages": [{"role": "user", "content": "Count: 1, 2"}]}  # fmt: skip
    out = post(srv, "/v1/messages", body).json()
    assert out["stop_reason"] == "stop_sequence" and out["stop_sequence"] == word
    assert word not in out["content"][0]["text"]


def test_stream_events(srv):
    body = {"max_tokens": 6, "stream": True, **GREEDY,
            "messages": [{"role": "user", "content": "Say hello"}]}  # fmt: skip
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=60) as r:
        events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0]["message"]["content"] == [] and events[0]["message"]["usage"]["input_tokens"]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    whole = post(srv, "/v1/messages", {**body, "stream": False}).json()
    assert text == whole["content"][0]["text"]
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert starts == stops == list(range(len(starts)))
    assert events[-2]["delta"]["stop_reason"] == whole["stop_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use(srv, stream):
    choice = {"type": "any", "disable_parallel_tool_use": True}
    body = {"max_tokens": 60, "tools": [WEATHER], "tool_choice": choice, **GREEDY,
            "messages": [{"role": "user", "content": "Weather?"}], "stream": stream}  # fmt: skip
    if not stream:
        out = post(srv, "/v1/messages", body).json()
        tool = next(b for b in out["content"] if b["type"] == "tool_use")
        assert out["stop_reason"] == "tool_use"
        assert tool["name"] == "get_weather" and isinstance(tool["input"]["city"], str)
        return
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=60) as r:
        events = sse_events(r)
    starts = [e for e in events if e["type"] == "content_block_start"]
    start = next(e for e in starts if e["content_block"]["type"] == "tool_use")
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    args = "".join(e["delta"]["partial_json"] for e in deltas if e["index"] == start["index"])
    assert start["content_block"]["name"] == "get_weather" and json.loads(args)["city"]
    assert [e["index"] for e in starts] == list(range(len(starts)))
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == (
        "tool_use"
    )


def test_tool_results_become_tool_messages():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "rain", "is_error": False},
            {"type": "text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    out = openai_messages("Be brief.", messages)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "user"]
    call = out[2]["tool_calls"][0]
    assert out[2]["content"] == "Checking." and call["id"] == "t1"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert out[3] == {"role": "tool", "tool_call_id": "t1", "content": "rain"}
    assert out[4] == {"role": "user", "content": "And tomorrow?"}


def test_conversation_with_a_tool_result(srv):
    use = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "rain", "is_error": True}
    body = {"max_tokens": 4, **GREEDY, "messages": [
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]}]}  # fmt: skip
    out = post(srv, "/v1/messages", body)
    assert out.status_code == 200 and out.json()["content"][0]["type"] == "text"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "user or assistant"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "unknown content"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]}]}, "image input"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}},
         "tool_choice"),
    ],
)  # fmt: skip
def test_bad_requests_are_400(srv, body, message):
    r = post(srv, "/v1/messages", body)
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_empty_conversation_is_accepted(srv):
    out = post(srv, "/v1/messages", {"max_tokens": 2, "messages": [], **GREEDY})
    assert out.status_code == 200 and out.json()["type"] == "message"


def test_conversion_errors_are_api_errors():
    with pytest.raises(ApiError):
        openai_messages(None, [{"role": "user", "content": 5}])


THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{% if m.reasoning_content %}<think>"
    "{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_earlier_thinking_reaches_the_template(live_server):
    """An assistant's thinking blocks become its reasoning_content, which templates such as
    Qwen3's render in the history (llama-server keeps them too)."""
    srv = live_server(n_ctx=512, chat_template=THINKING_TEMPLATE)
    thought = "I should list the files first."
    history = [
        {"role": "user", "content": "Fix the bug"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": thought, "signature": "s"},
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "x"}]},
    ]  # fmt: skip
    bare = [history[0], {**history[1], "content": history[1]["content"][1:]}, history[2]]
    count = {}
    for name, messages in (("with", history), ("without", bare)):
        body = {"model": "m", "messages": messages, "tools": [WEATHER]}
        r = post(srv, "/v1/messages/count_tokens", body)
        assert r.status_code == 200, r.text
        count[name] = r.json()["input_tokens"]
    assert count["with"] > count["without"]
    openai = [{"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello", "reasoning_content": thought}]  # fmt: skip
    prompt = post(srv, "/apply-template", {"messages": openai}).json()["prompt"]
    assert f"<|assistant|><think>{thought}</think>Hello" in prompt
    blocks = [{"type": "thinking", "thinking": "a user's"}, {"type": "text", "text": "Hi"}]
    out = openai_messages(None, [{"role": "user", "content": blocks}])
    assert out == [{"role": "user", "content": "Hi"}]
    with pytest.raises(ApiError, match="thinking"):
        openai_messages(None, [{"role": "assistant", "content": [
            {"type": "thinking", "thinking": 5}]}])  # fmt: skip
