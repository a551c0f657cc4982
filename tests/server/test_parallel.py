"""Continuous batching: concurrent clients on 4 slots, cancellation, the queue, the API key."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_helpers import sse_events

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was",
    "The three primary colors are",
    "Water boils at",
    "My favourite food is",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "The opposite of hot is",
]
N = 4


# Greedy streams served together must equal the same requests served alone, token for token:
# continuous batching may not mix, lose or perturb tokens. (The reference multiplies batches of up
# to 32 rows one row at a time, so a row's numbers do not depend on its neighbours.)


def stream_tokens(url: str, prompt: str, n: int = N) -> tuple[list[int], str, dict, list]:
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": True,
            "cache_prompt": False, "n_probs": 2}  # fmt: skip
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/completion", json=body) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    tokens = [t for e in events[:-1] for t in e["tokens"]]
    text = "".join(e["content"] for e in events[:-1])
    probs = [p for e in events[:-1] for p in e["completion_probabilities"]]
    return tokens, text, events[-1], probs


def assert_same_stream(prompt, alone, together) -> None:
    a_tok, a_text, a_last, _ = alone
    b_tok, b_text, b_last, _ = together
    assert len(b_tok) == b_last["tokens_predicted"], prompt  # no token lost in the stream
    assert b_tok == a_tok, f"{prompt!r}: served alone {a_tok}, together {b_tok}"
    assert b_text == a_text, prompt
    assert b_last["tokens_predicted"] == a_last["tokens_predicted"]


def test_eight_clients_on_four_slots_match_alone(server):
    alone = [stream_tokens(server.url, p) for p in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: stream_tokens(server.url, p), PROMPTS))
    for prompt, a, b in zip(PROMPTS, alone, together, strict=True):
        assert_same_stream(prompt, a, b)
    # every slot served: the scheduler batched several slots per decode
    m = server.scheduler.metrics
    assert m.n_busy_slots_total > m.n_decode_total


def wait_idle(url: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = httpx.get(url + "/slots", timeout=10).json()
        if not any(s["is_processing"] for s in slots):
            return slots
        time.sleep(0.2)
    raise AssertionError(f"slots still busy: {slots}")


def test_hang_up_cancels_generation(server):
    body = {"prompt": "Tell me a long story.", "n_predict": 500, "stream": True, "ignore_eos": True}
    url = server.url + "/completion"
    with httpx.Client(timeout=60) as c, c.stream("POST", url, json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one token arrived; hang up
    wait_idle(server.url, 30)
    assert server.scheduler.metrics.requests_cancelled >= 1


def test_hang_up_without_stream_cancels(live_server):
    # A request far longer than the client waits at any plausible speed (4,000 tokens: 13 s at
    # 300 t/s), so the hang-up always comes first: 500 tokens in 512 cells over 4 slots once
    # finished inside the 3 s when the CPU backend became fast enough.
    server = live_server(n_ctx=4096, n_parallel=1)
    body = {"prompt": "Tell me a long story.", "n_predict": 4000, "ignore_eos": True}
    before = server.scheduler.metrics.requests_cancelled
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/completion", json=body, timeout=2)
    wait_idle(server.url, 30)
    assert server.scheduler.metrics.requests_cancelled == before + 1


def test_full_queue_answers_503(live_server):
    srv = live_server(n_ctx=256, n_parallel=1, queue_size=1)
    body = {"prompt": "Tell me a long story.", "n_predict": 200, "stream": True, "ignore_eos": True}
    stop = threading.Event()
    statuses: list[int] = []

    def hold() -> None:
        with (
            httpx.Client(timeout=60) as c,
            c.stream("POST", srv.url + "/completion", json=body) as r,
        ):
            statuses.append(r.status_code)
            stop.wait(60)

    def until(cond) -> None:
        deadline = time.monotonic() + 30
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cond()

    sched = srv.scheduler
    threads = [threading.Thread(target=hold) for _ in range(2)]
    threads[0].start()
    until(lambda: sched.n_busy == 1)  # the first request has the slot
    threads[1].start()
    until(lambda: sched.n_waiting == 1)  # the second waits in the queue, which is now full
    r = httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 1}, timeout=30)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "unavailable_error"
    assert statuses == [200, 200]
    wait_idle(srv.url, 30)
    assert httpx.get(srv.url + "/health").status_code == 200


def test_api_key(live_server):
    srv = live_server(n_ctx=128, api_key="sekrit")
    body = {"content": "hello"}
    r = httpx.post(srv.url + "/tokenize", json=body)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    bad = httpx.post(srv.url + "/tokenize", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.post(srv.url + "/tokenize", json=body, headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200 and ok.json()["tokens"]
    assert httpx.get(srv.url + "/health").status_code == 200  # public, as in llama-server
    assert httpx.get(srv.url + "/v1/models").status_code == 200


def test_cors_as_llama_server_by_default(live_server):
    srv = live_server(n_ctx=128, api_key="k")
    r = httpx.get(srv.url + "/health", headers={"Origin": "http://example.com"})
    assert r.headers["access-control-allow-origin"] == "http://example.com"
    # a browser's preflight carries no key: answered 200, with what may follow
    pre = httpx.options(srv.url + "/completion", headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization"})  # fmt: skip
    assert pre.status_code == 200 and pre.text == ""
    assert pre.headers["access-control-allow-origin"] == "http://example.com"
    assert pre.headers["access-control-allow-credentials"] == "true"
    assert pre.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    # refusals carry the header too, so the browser shows the error
    refused = httpx.get(srv.url + "/props", headers={"Origin": "http://example.com"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"]


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("http://localhost:8080", True), ("http://127.0.0.1", True), ("http://[::1]:3000", True),
     ("http://localhost.evil.com", False), ("http://evil.com", False)],
)  # fmt: skip
def test_cors_localhost_only(live_server, origin, allowed):
    srv = live_server(n_ctx=128, cors_origins="localhost")
    r = httpx.options(srv.url + "/completion", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers.get("access-control-allow-origin") == (origin if allowed else None)


def test_cors_none(live_server):
    srv = live_server(n_ctx=128, cors_origins="none")
    r = httpx.get(srv.url + "/health", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in r.headers
