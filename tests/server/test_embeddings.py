"""Embeddings (`--embedding`, `--pooling`): /embedding, /embeddings and OpenAI's /v1/embeddings
give the model's pooled final hidden states, as the engine computes them alone."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from server_helpers import free_port, reference_tokens, serve_process

PROMPT = "I believe the meaning of life is"


@pytest.fixture(scope="module")
def embedder(live_server):
    """Two slots, pooling from the model (SmolLM2's GGUF names none: mean)."""
    return live_server(n_ctx=512, n_parallel=2, embedding=True, metrics=True)


def engine_embedding(model, text, pooling, normalize=2):
    ids = model.tokenize(text, parse_special=True)
    return model.context(n_ctx=256).embed(ids, pooling, normalize=normalize)


def test_openai_embedding_is_the_engines_mean_pooled_unit_vector(embedder, model):
    r = httpx.post(embedder.url + "/v1/embeddings", json={"input": PROMPT}, timeout=120)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "smollm2-135m-instruct-q4_1.gguf"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = np.array(item["embedding"])
    assert vector.shape == (model.hp.n_embd,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    np.testing.assert_allclose(vector, engine_embedding(model, PROMPT, "mean"), atol=1e-5)
    n = len(model.tokenize(PROMPT, parse_special=True))
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_a_batch_keeps_its_order_and_equal_inputs_give_equal_vectors(embedder, model):
    ids = model.tokenize("hello world", parse_special=True)
    inputs = ["hello world", "a completely different sentence", ids,
              {"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]},
              {"prompt_string": "hello world"}]  # fmt: skip
    r = httpx.post(embedder.url + "/v1/embeddings", json={"input": inputs}, timeout=120)
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3, 4]
    vectors = [np.array(d["embedding"]) for d in data]
    for same in vectors[2:]:
        np.testing.assert_allclose(same, vectors[0], atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.99  # a different text points elsewhere
    n_other = len(model.tokenize(inputs[1], parse_special=True))
    assert r.json()["usage"]["prompt_tokens"] == 4 * len(ids) + n_other


def test_base64_is_the_same_float32_vector(embedder):
    url = embedder.url + "/v1/embeddings"
    floats = httpx.post(url, json={"input": PROMPT}, timeout=120).json()["data"][0]
    r = httpx.post(url, json={"input": PROMPT, "encoding_format": "base64"}, timeout=120)
    item = r.json()["data"][0]
    assert item["encoding_format"] == "base64"
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, floats["embedding"], atol=1e-6)


def test_native_route_and_embd_normalize(embedder, model):
    r = httpx.post(embedder.url + "/embedding",
                   json={"content": PROMPT, "embd_normalize": -1}, timeout=120)  # fmt: skip
    assert r.status_code == 200
    (item,) = r.json()
    assert item["index"] == 0 and len(item["embedding"]) == 1  # one pooled vector
    raw = np.array(item["embedding"][0])
    np.testing.assert_allclose(raw, engine_embedding(model, PROMPT, "mean", -1), atol=1e-4)
    assert abs(np.linalg.norm(raw) - 1) > 0.1  # not normalized


def test_bad_inputs_are_400_with_one_line(embedder):
    url = embedder.url + "/v1/embeddings"
    bad = [[], {"content": "text"}, {"content": [{"type": "unknown"}]}, "", [1.5], True,
           {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
           [10**9]]  # fmt: skip
    for value in bad:
        r = httpx.post(url, json={"input": value}, timeout=60)
        assert r.status_code == 400, value
        message = r.json()["error"]["message"]
        assert message and "\n" not in message
    r = httpx.post(url, json={"input": "x", "encoding_format": "int8"}, timeout=60)
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    assert httpx.post(url, json={}, timeout=60).status_code == 400


def test_a_prompt_longer_than_a_slot_is_refused(embedder):
    r = httpx.post(embedder.url + "/v1/embeddings",
                   json={"input": "This is a test " * 100}, timeout=60)  # fmt: skip
    assert r.status_code == 400
    err = r.json()["error"]
    assert "too large" in err["message"] and err["n_ctx"] == 256 and err["n_prompt_tokens"] > 256


def test_completions_run_beside_embeddings(embedder, model):
    """A decode gives logits or hidden states: with both kinds of request active the steps
    alternate, and each gets what it would alone."""
    want = model.detokenize(reference_tokens(model, "The capital of France is", 8))
    got = {}

    def complete():
        body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
        got["text"] = httpx.post(embedder.url + "/completion", json=body, timeout=300).json()

    t = threading.Thread(target=complete)
    t.start()
    r = httpx.post(embedder.url + "/v1/embeddings", json={"input": [PROMPT] * 3}, timeout=300)
    t.join()
    assert got["text"]["content"] == want
    for item in r.json()["data"]:
        np.testing.assert_allclose(item["embedding"], engine_embedding(model, PROMPT, "mean"),
                                   atol=1e-5)  # fmt: skip
    metrics = httpx.get(embedder.url + "/metrics").text
    assert "llamacpp:prompt_tokens_total" in metrics


def test_pooling_none_gives_every_tokens_state(live_server, model):
    srv = live_server(n_ctx=256, embedding=True, pooling="none")
    r = httpx.post(srv.url + "/embeddings", json={"input": "hello hello hello"}, timeout=120)
    assert r.status_code == 200
    rows = np.array(r.json()[0]["embedding"])
    want = engine_embedding(model, "hello hello hello", "none")
    assert rows.shape == want.shape == (3, model.hp.n_embd)
    np.testing.assert_allclose(rows, want, atol=1e-4)
    r = httpx.post(srv.url + "/v1/embeddings", json={"input": "hello"}, timeout=60)
    assert r.status_code == 400 and "not OAI compatible" in r.json()["error"]["message"]


def test_without_embedding_the_routes_say_how_to_get_them(server):
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "x"}, timeout=60)
    assert r.status_code == 501 and "--embeddings" in r.json()["error"]["message"]


def test_serve_embeddings_and_pooling_flags(smollm2_path, model, tmp_path):
    args = ["-m", str(smollm2_path), "-c", "128", "--device", "cpu", "--embeddings", "--pooling"]
    with serve_process([*args, "last"], tmp_path) as url:
        r = httpx.post(url + "/v1/embeddings", json={"input": PROMPT}, timeout=120)
        vector = r.json()["data"][0]["embedding"]
        np.testing.assert_allclose(vector, engine_embedding(model, PROMPT, "last"), atol=1e-5)
    cmd = [sys.executable, "-m", "llmrt", "serve", "--port", str(free_port()), *args]
    bad = subprocess.run([*cmd, "rank"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--pooling" in bad.stderr and "Traceback" not in bad.stderr
