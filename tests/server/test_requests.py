"""Request forms llama-server takes: batches of prompts, n > 1, logit_bias, logprobs,
response_fields, return_progress, and the context-exceeded error's shape."""

from __future__ import annotations

import math

import httpx
import pytest
from server_helpers import sse_events

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "cache_prompt": False}


@pytest.fixture(scope="module")
def small_batches(live_server):
    """One slot reading its prompt 8 tokens a step."""
    return live_server(n_ctx=256, n_parallel=1, n_batch=8)


def first_token(client, **body) -> int:
    out = client.post("/completion", json={"prompt": PROMPT, "n_predict": 1, **GREEDY,
                                           "return_tokens": True, **body}).json()  # fmt: skip
    return out["tokens"][0]


def test_batch_of_prompts_answers_a_list(client, model):
    ids = model.tokenizer.encode(PROMPT, parse_special=True)
    one = client.post("/completion", json={"prompt": PROMPT, "n_predict": 3, **GREEDY}).json()
    body = {"prompt": [ids, PROMPT, {"prompt_string": PROMPT}], "n_predict": 3, **GREEDY}
    many = client.post("/completion", json=body, timeout=60).json()
    assert isinstance(many, list) and [m["index"] for m in many] == [0, 1, 2]
    assert all(m["content"] == one["content"] for m in many)
    # token ids at the top of the list make it ONE prompt, mixed with text
    mixed = client.post("/completion", json={"prompt": [*ids[:2], " France is"],
                                             "n_predict": 1, **GREEDY}).json()  # fmt: skip
    assert isinstance(mixed, dict) and mixed["tokens_evaluated"] == len(ids[:2]) + len(
        model.tokenizer.encode(" France is", add_special=False)
    )


def test_n_cmpl_gives_several_completions(client):
    body = {"prompt": PROMPT, "n_predict": 2, "n_cmpl": 2, **GREEDY}
    out = client.post("/completion", json=body, timeout=60).json()
    assert [o["index"] for o in out] == [0, 1] and out[0]["content"] == out[1]["content"]


def test_streamed_batch_chunks_carry_their_index(client):
    body = {"prompt": ["Hello", PROMPT], "n_predict": 2, "stream": True, **GREEDY}
    with client.stream("POST", "/completion", json=body) as r:
        events = sse_events(r)
    finals = [e for e in events if e["stop"]]
    assert sorted(e["index"] for e in finals) == [0, 1]
    for i in (0, 1):
        assert sum(1 for e in events if e["index"] == i and not e["stop"]) == 2


def test_openai_batch_and_n(client):
    body = {"prompt": ["Hello", PROMPT], "max_tokens": 2, "n": 2, **GREEDY}
    out = client.post("/v1/completions", json=body, timeout=60).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in out["choices"]]
    assert texts[0] == texts[1] and texts[2] == texts[3]
    single = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, **GREEDY})
    assert texts[2] == single.json()["choices"][0]["text"]
    # each prompt counted once, every choice's tokens
    assert out["usage"]["completion_tokens"] == 8
    n_prompt = single.json()["usage"]["prompt_tokens"]
    hello = client.post("/tokenize", json={"content": "Hello", "add_special": True}).json()
    assert out["usage"]["prompt_tokens"] == n_prompt + len(hello["tokens"])


def test_chat_n_choices(client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": 2,
            "temperature": 1.0, "seed": 3}  # fmt: skip
    out = client.post("/v1/chat/completions", json=body, timeout=60).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" for c in out["choices"])
    count = client.post("/chat/completions/input_tokens", json=body).json()["input_tokens"]
    assert out["usage"]["prompt_tokens"] == count


@pytest.mark.parametrize("form", ["list", "object", "text"])
def test_logit_bias_bans_the_greedy_token(client, model, form):
    best = first_token(client)
    piece = model.tokenizer.decode([best])
    bias = {
        "list": [[best, False]],
        "object": {str(best): -100},
        "text": [[piece, False]],  # a text's tokens (here the one token) get the bias
    }[form]
    body = {"prompt": PROMPT, "n_predict": 1, **GREEDY, "return_tokens": True, "logit_bias": bias}
    out = client.post("/completion", json=body).json()
    assert out["tokens"][0] != best
    settings_bias = out["generation_settings"]["logit_bias"]
    assert {"token": best, "bias": None if form != "object" else -100.0} in settings_bias


def test_logit_bias_lifts_a_token(client):
    target = first_token(client, prompt="Bananas are")
    body = {"prompt": PROMPT, "max_tokens": 1, **GREEDY, "logit_bias": {str(target): 100}}
    out = client.post("/v1/completions", json=body).json()
    assert (
        out["choices"][0]["text"]
        == client.post("/detokenize", json={"tokens": [target]}).json()["content"]
    )


def test_chat_logprobs(client):
    body = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4,
            "logprobs": True, "top_logprobs": 3, **GREEDY}  # fmt: skip
    choice = client.post("/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for t in content:
        top = t["top_logprobs"]
        assert len(top) == 3 and all(x["logprob"] <= 0 for x in top)
        assert [x["logprob"] for x in top] == sorted((x["logprob"] for x in top), reverse=True)
        # greedy: the chosen token is the most likely one
        assert t["id"] == top[0]["id"] and math.isclose(t["logprob"], top[0]["logprob"])
    # without top_logprobs, only the chosen tokens'
    plain = {**body, "top_logprobs": None}
    content = client.post("/v1/chat/completions", json=plain).json()["choices"][0]["logprobs"]
    assert all(t["top_logprobs"] == [] for t in content["content"])
    # and none unless asked
    off = client.post(
        "/v1/chat/completions", json={**body, "logprobs": False, "top_logprobs": None}
    )
    assert off.json()["choices"][0]["logprobs"] is None


def test_chat_logprobs_stream(client):
    body = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4,
            "logprobs": True, "top_logprobs": 2, "stream": True, **GREEDY}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    text = tokens = ""
    for e in events[1:]:
        choice = e["choices"][0]
        if choice["finish_reason"] is None:
            text += choice["delta"].get("content", "")
            tokens += "".join(t["token"] for t in choice["logprobs"]["content"])
    assert text and tokens == text


def test_response_fields(client):
    body = {"prompt": PROMPT, "n_predict": 2, **GREEDY,
            "response_fields": ["content", "generation_settings/n_predict", "no/such"]}  # fmt: skip
    out = client.post("/completion", json=body).json()
    assert set(out) == {"content", "generation_settings/n_predict"}
    assert out["generation_settings/n_predict"] == 2 and isinstance(out["content"], str)


@pytest.mark.parametrize("path", ["/completion", "/v1/chat/completions"])
def test_return_progress(small_batches, path):
    text = "one two three four five six seven eight nine ten eleven twelve"
    body = {"n_predict": 1, "stream": True, "return_progress": True, "temperature": 0}
    if path == "/completion":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    for _ in range(2):  # the second request finds most of its prompt cached
        with httpx.stream("POST", small_batches.url + path, json=body, timeout=60) as r:
            progress = [e["prompt_progress"] for e in sse_events(r) if "prompt_progress" in e]
        first, last = progress[0], progress[-1]
        assert first["processed"] == first["cache"] and last["processed"] == last["total"]
        assert all(p["total"] == first["total"] and p["cache"] == first["cache"] for p in progress)
        steps = [
            b["processed"] - a["processed"] for a, b in zip(progress, progress[1:], strict=False)
        ]
        assert all(0 < s <= 8 for s in steps)  # one event per prompt chunk of the 8-token batch
    assert first["cache"] > 0


def test_context_exceeded_body(client, server):
    r = client.post("/completion", json={"prompt": "word " * 300, "n_predict": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "exceed_context_size_error"
    assert err["n_ctx"] == server.scheduler.n_ctx_slot and err["n_prompt_tokens"] > err["n_ctx"]


def test_cached_tokens_in_usage(client):
    body = {"prompt": PROMPT + " a city of", "max_tokens": 1, "temperature": 0, "id_slot": 3}
    client.post("/v1/completions", json=body)
    usage = client.post("/v1/completions", json=body).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
