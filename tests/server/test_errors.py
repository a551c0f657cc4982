"""Bad requests get a 4xx with llama-server's JSON error, and the server keeps serving."""

from __future__ import annotations

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
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n=2"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "many"}', "max_tokens as text"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', "several prompts"),
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
