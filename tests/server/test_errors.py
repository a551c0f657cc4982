"""Bad requests get a 4xx with llama-server's JSON error, and the server keeps serving."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest

BAD = [
    ("/completion", b'{"prompt": "hi", "n_predict": 2', "invalid JSON"),
    ("/completion", b"not json at all", "not JSON"),
    ("/completion", b"", "empty body"),
    ("/completion", b"[1, 2]", "not an object"),
    ("/completion", b'{"n_predict": 2}', "missing prompt"),
    ("/completion", b'{"prompt": 5}', "prompt of the wrong type"),
    ("/completion", b'{"prompt": "hi", "n_predict": "2"}', "n_predict as a string"),
    ("/completion", b'{"prompt": "hi", "n_predict": 1e400}', "n_predict infinite"),
    ("/completion", b'{"prompt": "hi", "n_predict": 100000000000000000000}', "huge n_predict"),
    ("/completion", b'{"prompt": "hi", "n_predict": -5}', "n_predict below -1"),
    ("/completion", b'{"prompt": "hi", "temperature": "hot"}', "temperature as text"),
    ("/completion", b'{"prompt": "hi", "top_p": 7}', "top_p over 1"),
    ("/completion", b'{"prompt": "hi", "temperature": NaN}', "NaN"),
    ("/completion", b'{"prompt": "hi", "seed": 99999999999}', "seed over 2**32"),
    ("/completion", b'{"prompt": "hi", "stop": "x"}', "stop not a list"),
    ("/completion", b'{"prompt": "hi", "stream": "yes"}', "stream as text"),
    ("/completion", b'{"prompt": [1, 99999999]}', "token id outside the vocabulary"),
    ("/completion", b'{"prompt": [-1]}', "negative token id"),
    ("/completion", b'{"prompt": ""}', "empty prompt"),
    ("/completion", b'{"prompt": "hi", "id_slot": 99}', "no such slot"),
    ("/completion", b'{"prompt": "hi", "n_probs": -1}', "negative n_probs"),
    ("/tokenize", b'{"content": 3}', "content not text"),
    ("/detokenize", b'{"tokens": "abc"}', "tokens not a list"),
    ("/detokenize", b'{"tokens": [99999999]}', "token outside the vocabulary"),
    ("/v1/chat/completions", b'{"messages": []}', "no messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "hi"}]}', "message without role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', "bad role"),
    ("/v1/chat/completions", b'{"messages": "hi"}', "messages not a list"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "n": 5}',
        "n over the 4 slots",
    ),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', "n=0"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}',
        "top_logprobs without logprobs",
    ),
    ("/completion", b'{"prompt": "hi", "logit_bias": [[1]]}', "logit_bias pair of one"),
    ("/completion", b'{"prompt": "hi", "logit_bias": [[1, "x"]]}', "logit_bias text bias"),
    ("/completion", b'{"prompt": "hi", "logit_bias": {"99999999": 1}}', "logit_bias bad id"),
    ("/completion", b'{"prompt": "hi", "logit_bias": 3}', "logit_bias a number"),
    ("/completion", b'{"prompt": []}', "empty batch"),
    ("/completion", b'{"prompt": ["a", 5.5]}', "float in a batch"),
    ("/completion", b'{"prompt": {"text": "a"}}', "object without prompt_string"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "many"}', "max_tokens as text"),
    ("/v1/completions", b'{"max_tokens": 3}', "missing prompt"),
]


@pytest.mark.parametrize(("path", "body", "why"), BAD, ids=[b[2] for b in BAD])
def test_bad_request_is_400_json(client, path, body, why):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (why, r.text)
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"].endswith("error") and err["message"]


def test_prompt_over_the_context(client):
    r = client.post("/completion", json={"prompt": "word " * 300, "n_predict": 1})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "exceed_context_size_error"


def test_unknown_fields_are_ignored(client):
    """As llama-server does: a field it does not know is ignored, not refused."""
    r = client.post("/completion", json={"prompt": "hi", "n_predict": 1, "frobnicate": 3})
    assert r.status_code == 200


def test_unknown_path_and_method(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/completion")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_form_content_type_is_read_as_json(client):
    """curl -d without -H sends application/x-www-form-urlencoded; llama-server reads JSON."""
    r = client.post("/tokenize", content=b'{"content": "hi"}',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200 and r.json()["tokens"]


def test_still_alive(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.post("/completion", json={"prompt": "hi", "n_predict": 1})
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 1


def test_prompt_longer_than_a_batch_is_answered(live_server, model):
    """The first batch of a long prompt wants no logits: it used to crash the decode (HTTP 500)."""
    srv = live_server(n_ctx=1024, n_parallel=1, n_batch=128)
    prompt = "The quick brown fox jumps over the lazy dog. " * 30
    ids = model.tokenize(prompt)
    assert len(ids) > 2 * 128
    r = httpx.post(srv.url + "/completion", timeout=300, json={
        "prompt": prompt, "n_predict": 2, "temperature": 0, "return_tokens": True,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    first = int(np.argmax(model.context(n_ctx=1024).eval(ids)))
    assert r.json()["tokens"][0] == first


def test_a_failing_decode_is_a_logged_500_and_the_server_recovers(live_server, monkeypatch, caplog):
    srv = live_server(n_ctx=256, n_parallel=1)
    ctx = srv.app.state.llmrt.scheduler.ctx

    def broken(*args, **kwargs):
        raise RuntimeError("injected decode failure")

    monkeypatch.setattr(ctx, "decode", broken)
    with caplog.at_level(logging.WARNING, logger="llmrt.server"):
        r = httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 1}, timeout=60)
    assert r.status_code == 500 and "injected decode failure" in r.json()["error"]["message"]
    logged = [rec for rec in caplog.records if rec.exc_info and rec.name == "llmrt.server"]
    assert any("injected decode failure" in str(rec.exc_info[1]) for rec in logged)
    monkeypatch.undo()
    r = httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 1}, timeout=60)
    assert r.status_code == 200


def test_an_unhandled_exception_is_a_logged_json_500(server, model, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ValueError("injected tokenizer bug")

    monkeypatch.setattr(model.tokenizer, "encode", broken)
    with caplog.at_level(logging.WARNING, logger="llmrt.server"):
        r = httpx.post(server.url + "/tokenize", json={"content": "hi"}, timeout=60)
    assert r.status_code == 500
    assert r.json()["error"] == {"code": 500, "message": "ValueError: injected tokenizer bug",
                                 "type": "server_error"}  # fmt: skip
    logged = [rec for rec in caplog.records if rec.exc_info and rec.name == "llmrt.server"]
    assert any(isinstance(rec.exc_info[1], ValueError) for rec in logged)
