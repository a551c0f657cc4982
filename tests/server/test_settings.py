"""The server's sampling defaults (`llmrt serve --temp ... -n ...`): what requests get when they
name no value, and what /props and generation_settings report."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from server_helpers import free_port, serve_process

from llmrt.sampling import SamplingParams

PROMPT = "Once upon a time"
DEFAULTS = SamplingParams(seed=1234, temperature=0.5, top_k=7, top_p=0.9, min_p=0.1,
                          repeat_penalty=1.1, repeat_last_n=32)  # fmt: skip


@pytest.fixture(scope="module")
def tuned(live_server):
    """A server started with sampling defaults and -n 5."""
    return live_server(n_ctx=256, n_parallel=1, n_predict=5, sampling=DEFAULTS)


def test_props_show_the_defaults(tuned):
    params = httpx.get(tuned.url + "/props").json()["default_generation_settings"]["params"]
    assert params["seed"] == 1234 and params["temperature"] == 0.5
    assert params["top_k"] == 7 and params["top_p"] == 0.9 and params["min_p"] == 0.1
    assert params["repeat_penalty"] == 1.1 and params["repeat_last_n"] == 32
    assert params["n_predict"] == 5


def test_request_without_settings_takes_the_defaults(tuned):
    body = {"prompt": PROMPT, "ignore_eos": True, "return_tokens": True}
    out = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    settings = out["generation_settings"]
    assert settings["seed"] == 1234 and settings["temperature"] == 0.5 and settings["top_k"] == 7
    assert settings["n_predict"] == 5 and out["tokens_predicted"] == 5
    # the fixed default seed makes the draw repeat
    again = httpx.post(tuned.url + "/completion", json={**body, "cache_prompt": False}, timeout=60)
    first = httpx.post(tuned.url + "/completion", json={**body, "cache_prompt": False}, timeout=60)
    assert again.json()["tokens"] == first.json()["tokens"]


def test_n_predict_is_a_default_not_a_cap(tuned):
    body = {"prompt": PROMPT, "n_predict": 12, "ignore_eos": True, "temperature": 0}
    out = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    assert out["tokens_predicted"] == 12 and out["generation_settings"]["n_predict"] == 12
    # OpenAI's max_tokens likewise
    body = {"prompt": PROMPT, "max_tokens": 9, "ignore_eos": True, "temperature": 0}
    out = httpx.post(tuned.url + "/v1/completions", json=body, timeout=60).json()
    assert out["usage"]["completion_tokens"] == 9
    # and -1 means the server's default, as in llama-server
    body = {"prompt": PROMPT, "n_predict": -1, "ignore_eos": True, "temperature": 0}
    out = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    assert out["tokens_predicted"] == 5


def test_request_values_override_the_defaults(tuned):
    body = {"prompt": PROMPT, "n_predict": 2, "temperature": 0, "top_k": 3, "seed": 9}
    settings = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    settings = settings["generation_settings"]
    assert (settings["temperature"], settings["top_k"], settings["seed"]) == (0, 3, 9)
    assert settings["top_p"] == 0.9  # not named: the server's


def test_ignore_eos_shows_as_logit_bias(tuned, model):
    body = {"prompt": PROMPT, "n_predict": 2, "temperature": 0, "ignore_eos": True}
    bias = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    bias = bias["generation_settings"]["logit_bias"]
    assert {b["token"] for b in bias} == set(model.tokenizer.eog_ids)
    assert all(b["bias"] is None for b in bias)  # -inf, which JSON cannot write
    body["ignore_eos"] = False
    plain = httpx.post(tuned.url + "/completion", json=body, timeout=60).json()
    assert plain["generation_settings"]["logit_bias"] == []


def test_metrics_only_when_asked(tuned):
    r = httpx.get(tuned.url + "/metrics")
    assert r.status_code == 501 and "--metrics" in r.json()["error"]["message"]


def test_serve_flags_reach_props(smollm2_path, tmp_path):
    args = ["-m", str(smollm2_path), "-c", "64", "--device", "cpu", "--seed", "77", "--temp",
            "0.3", "--top-k", "5", "--top-p", "0.5", "--min-p", "0.2", "--repeat-penalty", "1.3",
            "-n", "4"]  # fmt: skip
    with serve_process(args, tmp_path) as url:
        props = httpx.get(url + "/props").json()["default_generation_settings"]["params"]
        assert (props["seed"], props["temperature"], props["top_k"]) == (77, 0.3, 5)
        assert (props["top_p"], props["min_p"], props["repeat_penalty"]) == (0.5, 0.2, 1.3)
        assert props["n_predict"] == 4
        assert httpx.get(url + "/metrics").status_code == 501
        # header names as llama-server spells them (for clients that compare them exactly)
        r = httpx.get(url + "/health", headers={"Origin": "http://x.org"})
        assert (b"Access-Control-Allow-Origin", b"http://x.org") in r.headers.raw


def test_serve_rejects_a_bad_default():
    cmd = [sys.executable, "-m", "llmrt", "serve", "--top-p", "2", "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "top_p must be between 0 and 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_aliases_tags_and_no_ui(live_server):
    srv = live_server(n_ctx=64, alias="tiny,code,fim", tags="small,chat", ui=False)
    model = httpx.get(srv.url + "/v1/models").json()["data"][0]
    assert model["id"] == "code"  # the first alias in sorted order, as llama-server
    assert model["aliases"] == ["code", "fim", "tiny"] and model["tags"] == ["chat", "small"]
    out = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert out.json()["model"] == "code"
    assert httpx.get(srv.url + "/").status_code == 404
    assert httpx.get(srv.url + "/health").status_code == 200


def test_date_string_reaches_the_template(live_server):
    srv = live_server(n_ctx=64, chat_template="{{ date_string }}|{{ messages[0]['content'] }}")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    prompt = httpx.post(srv.url + "/apply-template", json=body).json()["prompt"]
    assert prompt == time.strftime("%d %b %Y") + "|hi"
    body["chat_template_kwargs"] = {"date_string": "1 Jan 2000"}
    assert httpx.post(srv.url + "/apply-template", json=body).json()["prompt"] == "1 Jan 2000|hi"


@pytest.mark.parametrize(
    ("reasoning", "want"), [("auto", "True"), ("on", "True"), ("off", "False")]
)
def test_reasoning_sets_enable_thinking(live_server, reasoning, want):
    srv = live_server(n_ctx=64, reasoning=reasoning, chat_template="{{ enable_thinking }}")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(srv.url + "/apply-template", json=body).json()["prompt"] == want
    body["chat_template_kwargs"] = {"enable_thinking": reasoning == "off"}  # the request wins
    assert httpx.post(srv.url + "/apply-template", json=body).json()["prompt"] != want


def test_serve_rejects_a_bad_reasoning():
    cmd = [
        sys.executable,
        "-m",
        "llmrt",
        "serve",
        "--reasoning",
        "maybe",
        "--port",
        str(free_port()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--reasoning" in proc.stderr and "Traceback" not in proc.stderr
