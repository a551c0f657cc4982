"""The official `openai` client against the server, streaming and not."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture()
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=120)


def test_models(oai):
    models = oai.models.list()
    assert models.data[0].id.endswith(".gguf")


def test_chat(oai):
    r = oai.chat.completions.create(model="any", messages=MESSAGES, max_tokens=4, temperature=0,
                                    seed=1)  # fmt: skip
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream(oai):
    kw = {"model": "any", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    whole = oai.chat.completions.create(**kw).choices[0].message.content
    stream = oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    parts, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(parts) == whole
    assert reasons == ["length"] or reasons == ["stop"]
    assert usage is not None and usage.completion_tokens <= 4


def test_completions(oai):
    r = oai.completions.create(model="any", prompt="The capital of France is", max_tokens=3,
                               temperature=0, stop=["."])  # fmt: skip
    assert r.choices[0].text == " Paris"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 2


def test_completions_stream(oai):
    stream = oai.completions.create(model="any", prompt="The capital of France is",
                                    max_tokens=3, temperature=0, stream=True)  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith(" Paris")
    assert chunks[-1].choices[0].finish_reason == "length"


def test_bad_request_raises_client_error(oai):
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="any", messages=[], max_tokens=1)
