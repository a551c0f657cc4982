"""llama-server's native endpoints against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from server_helpers import free_port, reference_tokens, sse_events

PROMPT = "The capital of France is"


def test_health_props_slots(client):
    assert client.get("/health").json() == {"status": "ok"}
    props = client.get("/props").json()
    assert props["total_slots"] == 4
    assert props["default_generation_settings"]["n_ctx"] == 128
    assert "im_start" in props["chat_template"]
    slots = client.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1, 2, 3]
    assert all(s["n_ctx"] == 128 for s in slots)


def test_tokenize_detokenize(client, model):
    ids = client.post("/tokenize", json={"content": PROMPT}).json()["tokens"]
    assert ids == model.tokenizer.encode(PROMPT, add_special=False, parse_special=True)
    pieces = client.post("/tokenize", json={"content": PROMPT, "with_pieces": True}).json()
    assert [p["id"] for p in pieces["tokens"]] == ids
    assert "".join(p["piece"] for p in pieces["tokens"]) == PROMPT
    assert client.post("/detokenize", json={"tokens": ids}).json() == {"content": PROMPT}


def test_greedy_equals_engine_generate(client, model):
    """A request served alone gives the tokens of llmrt.engine.generate on a fresh context."""
    n = 8
    want = reference_tokens(model, PROMPT, n)
    body = {"prompt": PROMPT, "n_predict": n, "temperature": 0, "return_tokens": True,
            "cache_prompt": False}  # fmt: skip
    r = client.post("/completion", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens"] == want
    assert out["content"] == model.tokenizer.decode(
        [t for t in want if t not in model.tokenizer.eog_ids]
    )
    assert out["stop"] is True and out["stopped_limit"] is True and out["stop_type"] == "limit"
    assert out["tokens_predicted"] == n
    assert out["tokens_evaluated"] == len(model.tokenizer.encode(PROMPT, parse_special=True))
    t = out["timings"]
    assert t["predicted_n"] == n and t["predicted_per_second"] > 0 and t["prompt_n"] > 0


def test_stream_chunks_and_final(client):
    with client.stream("POST", "/completion",
                       json={"prompt": PROMPT, "n_predict": 4, "stream": True,
                             "temperature": 0}) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    *chunks, last = events
    assert len(chunks) == 4 and all(c["stop"] is False for c in chunks)
    assert last["stop"] is True and last["tokens_predicted"] == 4
    assert {"timings", "stopped_eos", "stopped_limit", "stopped_word"} <= last.keys()
    # the streamed text is what the same request gives without streaming
    text = "".join(c["content"] for c in chunks)
    again = client.post("/completion", json={"prompt": PROMPT, "n_predict": 4, "temperature": 0})
    assert again.json()["content"] == text


def test_prompt_cache_reuses_common_prefix(client):
    body = {"prompt": PROMPT + " a city", "n_predict": 1, "temperature": 0, "id_slot": 2}
    first = client.post("/completion", json=body).json()
    body["prompt"] = PROMPT + " a country"
    second = client.post("/completion", json=body).json()
    assert second["id_slot"] == 2
    assert second["timings"]["cache_n"] >= 5  # "The capital of France is a" was kept
    assert second["timings"]["prompt_n"] < first["timings"]["prompt_n"]


def test_stop_word(client):
    r = client.post("/completion", json={"prompt": PROMPT, "n_predict": 8, "temperature": 0,
                                         "stop": ["."]}).json()  # fmt: skip
    assert r["stopped_word"] is True and r["stopping_word"] == "."
    assert r["content"] == " Paris"


def test_n_probs_are_softmax_of_logits(client):
    r = client.post("/completion", json={"prompt": PROMPT, "n_predict": 2, "temperature": 0,
                                         "n_probs": 3}).json()  # fmt: skip
    probs = r["completion_probabilities"]
    assert len(probs) == 2
    first = probs[0]
    assert first["token"] == " Paris"
    top = first["top_logprobs"]
    assert len(top) == 3 and top[0]["id"] == first["id"]
    assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]


def test_token_prompt_and_seeded_sampling(client, model):
    ids = model.tokenizer.encode(PROMPT, parse_special=True)
    # cache_prompt off: with it, the second request evaluates only the last prompt token, and the
    # numpy reference's logits depend on the batch's shape (BLAS gemv vs gemm, amplified by q8
    # activation rounding), so a seeded draw near a boundary may differ.
    body = {"prompt": ids, "n_predict": 3, "temperature": 1.0, "seed": 42, "return_tokens": True,
            "cache_prompt": False}  # fmt: skip
    a = client.post("/completion", json=body).json()
    b = client.post("/completion", json=body).json()
    assert a["tokens"] == b["tokens"] and len(a["tokens"]) == 3


def test_metrics(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:n_decode_total", "llamacpp:kv_cache_usage_ratio",
                 "llamacpp:requests_processing"):  # fmt: skip
        assert f"\n{name} " in "\n" + text, name


def test_issue_curl_request_as_written(smollm2_path, tmp_path):
    """`llmrt serve` in a subprocess; the issue's request, sent as curl sends it, streams until
    the slot's context is full (n_predict -1), and /health says loading before ok."""
    port = free_port()
    cmd = [sys.executable, "-m", "llmrt", "serve", "-m", str(smollm2_path), "--port",
           str(port), "-c", "24", "--device", "cpu"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}"
        statuses = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                status = httpx.get(url + "/health", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            statuses.add(status)
            if status == 200:
                break
            assert status == 503
            time.sleep(0.05)
        assert 200 in statuses, (tmp_path / "serve.log").read_text()
        # one line once the model is loaded and the server answers
        assert (
            f"loaded on cpu:0; ready at http://127.0.0.1:{port}"
            in (tmp_path / "serve.log").read_text()
        )
        # curl -X POST localhost:PORT/completion -H "Content-Type: application/json"
        #      -d '{"prompt": "...", "n_predict": -1, "stream": true}'
        import socket

        body = b'{"prompt": "...", "n_predict": -1, "stream": true}'
        request = (
            b"POST /completion HTTP/1.1\r\nHost: localhost:" + str(port).encode() + b"\r\n"
            b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(request)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
                more = s.recv(65536)
                if not more:
                    break
                data += more
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/event-stream" in head
        import json

        lines = [ln for ln in payload.split(b"\n") if ln.startswith(b"data: ")]
        events = [json.loads(ln[6:]) for ln in lines]
        assert events[-1]["stop"] is True
        assert events[-1]["stopped_limit"] or events[-1]["stopped_eos"]
        assert all(e["stop"] is False for e in events[:-1])
        n_prompt = events[-1]["tokens_evaluated"]
        if events[-1]["stopped_limit"]:  # ran until the 24-cell context was full
            assert events[-1]["tokens_predicted"] == 24 - n_prompt + 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_serve_exits_when_the_model_cannot_load(tmp_path):
    missing = tmp_path / "missing.gguf"
    cmd = [sys.executable, "-m", "llmrt", "serve", "-m", str(missing), "--port",
           str(free_port())]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "cannot load the model" in proc.stderr and "not found" in proc.stderr
