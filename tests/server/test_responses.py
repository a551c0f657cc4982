"""OpenAI's Responses API (/v1/responses), text in and out, on the chat machinery."""

from __future__ import annotations

import httpx
import pytest
from server_helpers import sse_events

openai = pytest.importorskip("openai")

INPUT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def srv(live_server):
    return live_server(n_ctx=256, n_parallel=1, n_batch=8)


def test_reply_matches_chat_and_the_sdk_reads_it(srv):
    client = openai.OpenAI(api_key="x", base_url=srv.url + "/v1")
    res = client.responses.create(model="m", input=INPUT, max_output_tokens=6, temperature=0)
    assert res.id.startswith("resp_") and res.output[0].id.startswith("msg_")
    body = {"messages": INPUT, "max_tokens": 6, "temperature": 0}
    chat = httpx.post(srv.url + "/v1/chat/completions", json=body).json()
    assert res.output_text == chat["choices"][0]["message"]["content"]
    assert res.usage.input_tokens == chat["usage"]["prompt_tokens"]
    limited = chat["choices"][0]["finish_reason"] == "length"
    assert res.status == ("incomplete" if limited else "completed")


def test_stream_events(srv):
    body = {"input": "one two three four five six seven eight nine ten", "max_output_tokens": 4,
            "temperature": 0, "stream": True, "timings_per_token": True,
            "return_progress": True}  # fmt: skip
    with httpx.stream("POST", srv.url + "/v1/responses", json=body, timeout=60) as r:
        events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    progress = [e for e in events if "prompt_progress" in e]
    assert len(progress) > 1 and all(e["type"] == "response.in_progress" for e in progress)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas and all("predicted_per_second" in e["timings"] for e in deltas)
    msg = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    assert all(e["item_id"] == msg for e in deltas)
    completed = events[-1]
    text = completed["response"]["output"][0]["content"][0]["text"]
    assert text == "".join(e["delta"] for e in deltas) and completed["timings"]["predicted_n"]
    assert completed["response"]["usage"]["output_tokens"] == 4


@pytest.mark.parametrize(
    ("body", "message"),
    [({"input": "x", "tools": [{"type": "function", "name": "f"}]}, "tools"),
     ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "text parts"),
     ({"input": [{"role": "robot", "content": "x"}]}, "a message with a role")],
)  # fmt: skip
def test_bad_requests_are_400(srv, body, message):
    r = httpx.post(srv.url + "/v1/responses", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
