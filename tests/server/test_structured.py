"""Structured output: GBNF grammars, JSON schemas and OpenAI's response_format, enforced while
sampling (llguidance), and a clear 400 for a grammar or schema that cannot be used."""

from __future__ import annotations

import json
import re

import httpx
import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
HOT = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0}  # far from the grammar
GREEDY = {"temperature": 0}


def test_json_schema_is_obeyed_at_temperature_one(client):
    """100 sampled generations (4 a request), every one parses and validates."""
    outputs = []
    for seed in range(25):
        body = {"prompt": "A person as JSON:", "json_schema": PERSON, "n_predict": 80,
                "temperature": 1.0, "seed": seed, "n_cmpl": 4}  # fmt: skip
        r = client.post("/completion", json=body, timeout=120)
        assert r.status_code == 200, r.text
        outputs += r.json()
    assert len(outputs) == 100
    for out in outputs:
        assert out["stop_type"] == "eos", out  # the grammar ended it, not the token limit
        jsonschema.validate(json.loads(out["content"]), PERSON)


def test_gbnf_grammar(client):
    grammar = 'root ::= ("yes" | "no") " because " [a-z]{1,8} "."'
    body = {"prompt": "Is the sky blue?", "grammar": grammar, "n_predict": 40, **HOT, "seed": 1}
    out = client.post("/completion", json=body).json()
    assert re.fullmatch(r"(yes|no) because [a-z]{1,8}\.", out["content"]), out["content"]
    assert out["stop_type"] == "eos"


def test_grammar_wins_over_logit_bias(client, model):
    """Fail closed: banning every token the grammar allows does not let other text through."""
    x = model.tokenizer.encode("x", add_special=False)
    body = {"prompt": "Say x:", "grammar": 'root ::= "x"', "n_predict": 4, "temperature": 0,
            "logit_bias": [[t, False] for t in x]}  # fmt: skip
    assert client.post("/completion", json=body).json()["content"] == "x"


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_object", "schema": PERSON},
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    ],
)
def test_chat_response_format(client, response_format):
    # sampled, within the schema's limits; greedy for any object (no limit to keep it short)
    sampling = {**HOT, "seed": 2} if response_format != {"type": "json_object"} else GREEDY
    body = {"messages": [{"role": "user", "content": "Give a person's name as JSON."}],
            "max_tokens": 80, "response_format": response_format, **sampling}  # fmt: skip
    choice = client.post("/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
    value = json.loads(choice["message"]["content"])
    assert isinstance(value, dict) and choice["finish_reason"] == "stop"
    if "schema" in response_format or response_format["type"] == "json_schema":
        jsonschema.validate(value, PERSON)


def test_openai_completions_json_schema_stream(client):
    fmt = {"type": "json_schema", "json_schema": {"schema": PERSON}}
    body = {"prompt": "Person:", "max_tokens": 80, "stream": True, "seed": 3, **HOT,
            "response_format": fmt}  # fmt: skip
    with client.stream("POST", "/v1/completions", json=body) as r:
        text = "".join(
            json.loads(line[6:])["choices"][0]["text"]
            for line in r.iter_lines()
            if line.startswith("data: {")
        )
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/completion", {"grammar": "root ::= this is (not valid GBNF"}, "invalid grammar"),
        ("/completion", {"json_schema": {"type": "hiccup"}}, "invalid json_schema"),
        ("/completion", {"json_schema": {"type": 123}}, "invalid json_schema"),
        ("/completion", {"json_schema": {}, "grammar": 'root ::= "a"'}, "not both"),
        ("/v1/chat/completions", {"response_format": {"type": "sound"}}, "response_format"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object", "schema": 123}},
         "response_format"),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "json_schema"),
        ("/v1/chat/completions", {"grammar": "root ::= (("}, "invalid grammar"),
    ],
)  # fmt: skip
def test_bad_grammar_or_schema_is_400(client, path, body, message):
    if path == "/completion":
        body = {"prompt": "hi", **body}
    else:
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and "\n" not in error["message"]


def test_grammar_in_a_batch_and_with_other_requests(client):
    """A constrained request and a free one served together each get what they asked for."""
    import concurrent.futures

    constrained = {"prompt": "Digits:", "grammar": "root ::= [0-9]{4}", "n_predict": 10, **HOT}
    free = {"prompt": "Once upon a time", "n_predict": 6, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(httpx.post, str(client.base_url) + "/completion", json=constrained,
                        timeout=60)  # fmt: skip
        b = pool.submit(httpx.post, str(client.base_url) + "/completion", json=free, timeout=60)
        assert re.fullmatch(r"[0-9]{4}", a.result().json()["content"])
        assert b.result().json()["tokens_predicted"] >= 1
