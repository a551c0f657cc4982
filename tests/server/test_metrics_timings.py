"""/metrics in llama-server's names and types, timings (the generation rate over the decode
steps after the first token, per token when asked), `truncated`, and /slots' next_token."""

from __future__ import annotations

import httpx
import pytest
from server_helpers import sse_events


@pytest.fixture(scope="module")
def srv(live_server):
    return live_server(n_ctx=128, n_parallel=1, n_batch=8, metrics=True)


def metrics(srv) -> tuple[dict[str, tuple[str, float]], httpx.Response]:
    r = httpx.get(srv.url + "/metrics")
    assert r.status_code == 200
    types, out = {}, {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("llamacpp:"):
            name, value = line.split(" ", 1)
            out[name] = (types[name], float(value))
    return out, r


def test_metrics_count_processed_and_cached_prompt_tokens(srv):
    before, _ = metrics(srv)
    body = {"prompt": "the quick brown fox jumps over the lazy dog", "n_predict": 3,
            "temperature": 0}  # fmt: skip
    runs = [httpx.post(srv.url + "/completion", json=body, timeout=60).json() for _ in range(2)]
    after, r = metrics(srv)
    assert int(r.headers["Process-Start-Time-Unix"]) > 0
    processed = sum(x["timings"]["prompt_n"] for x in runs)
    cached = sum(x["timings"]["cache_n"] for x in runs)
    assert cached > 0  # the second request reused the first one's prompt

    def grew(name: str) -> float:
        return after[name][1] - before.get(name, ("", 0.0))[1]

    assert grew("llamacpp:prompt_tokens_total") == processed
    assert grew("llamacpp:prompt_tokens_cached_total") == cached
    assert grew("llamacpp:tokens_predicted_total") == 6
    assert after["llamacpp:n_tokens_max"] == ("counter", 8.0)  # the 8-token batches
    assert after["llamacpp:requests_processing"] == ("gauge", 0.0)
    for name in ("llamacpp:n_decode_total", "llamacpp:spec_decode_num_drafts_total"):
        assert after[name][0] == "counter"


def test_generation_rate_is_over_the_steps_after_the_first_token(srv):
    one = httpx.post(srv.url + "/completion", json={"prompt": "I believe", "n_predict": 1,
                                                     "temperature": 0}).json()  # fmt: skip
    assert one["timings"]["predicted_per_second"] == 0.0
    body = {"prompt": "I believe", "n_predict": 6, "temperature": 0, "ignore_eos": True}
    t = httpx.post(srv.url + "/completion", json=body, timeout=60).json()["timings"]
    assert t["predicted_n"] == 6
    assert t["predicted_per_second"] == pytest.approx(1e3 * 5 / t["predicted_ms"])
    assert t["predicted_per_token_ms"] == pytest.approx(t["predicted_ms"] / 5)


def test_timings_per_token_in_stream(srv):
    body = {"prompt": "one two three four five six seven eight nine ten eleven twelve",
            "n_predict": 3, "stream": True, "timings_per_token": True, "return_progress": True,
            "cache_prompt": False}  # fmt: skip
    with httpx.stream("POST", srv.url + "/completion", json=body, timeout=60) as r:
        events = sse_events(r)
    progress = [e for e in events if "prompt_progress" in e]
    assert len(progress) > 2
    first = progress[0]["timings"]
    assert first["prompt_n"] == 0 and first["prompt_ms"] == 0.0 and first["predicted_n"] == 0
    prompt_ms = [e["timings"]["prompt_ms"] for e in progress]
    assert prompt_ms == sorted(prompt_ms) and prompt_ms[-1] > 0
    tokens = [e for e in events if not e["stop"] and "prompt_progress" not in e]
    assert [e["timings"]["predicted_n"] for e in tokens] == [1, 2, 3]


def test_truncated_when_the_slot_is_full(srv, model):
    body = {"prompt": "Once upon a time", "n_predict": -1, "ignore_eos": True, "temperature": 0}
    out = httpx.post(srv.url + "/completion", json=body, timeout=120).json()
    n_prompt = len(model.tokenizer.encode("Once upon a time", parse_special=True))
    assert out["truncated"] is True and out["stop_type"] == "limit"
    assert out["tokens_predicted"] == 128 - n_prompt + 1
    body["n_predict"] = 2
    assert httpx.post(srv.url + "/completion", json=body).json()["truncated"] is False


def test_slots_next_token(srv):
    slot = httpx.get(srv.url + "/slots").json()[0]
    assert slot["is_processing"] is False and "params" not in slot
    assert slot["next_token"] == [{"has_next_token": False, "n_remain": -1, "n_decoded": 0}]
