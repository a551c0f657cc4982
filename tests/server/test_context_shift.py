"""--context-shift: a slot whose context is full keeps n_keep tokens, drops half of the rest and
goes on; what it generates is what the model gives for the shortened text."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

PROMPT = "Write a long story about a dragon who learns to bake bread."
N_CTX = 64


@pytest.fixture(scope="module")
def shifting(live_server):
    return live_server(n_ctx=N_CTX, n_parallel=1, context_shift=True)


def reference(model, prompt_ids, n_predict, n_keep, n_ctx=N_CTX):
    """Greedy tokens (end-of-generation banned) with llama-server's shift, each time the slot
    is full, computed by evaluating the shortened text afresh."""
    eog = sorted(model.tokenizer.eog_ids)
    cache = list(prompt_ids)
    ctx = model.context(n_ctx=n_ctx)
    logits = ctx.eval(cache)
    out = []
    while True:
        logits = np.array(logits)
        logits[eog] = -np.inf
        tok = int(np.argmax(logits))
        out.append(tok)
        if len(out) == n_predict:
            return out
        if len(cache) + 1 >= n_ctx:
            keep = min(n_ctx - 4, n_keep + int(model.tokenizer.add_bos))
            n_discard = (len(cache) - keep) // 2
            cache = cache[:keep] + cache[keep + n_discard :]
            ctx = model.context(n_ctx=n_ctx)
            logits = ctx.eval([*cache, tok])
        else:
            logits = ctx.eval([tok])
        cache.append(tok)


@pytest.mark.parametrize("n_keep", [0, -1])
def test_generation_goes_past_the_slot_as_with_the_shortened_text(shifting, model, n_keep):
    ids = model.tokenize(PROMPT, parse_special=True)
    n_predict = 2 * N_CTX
    body = {"prompt": PROMPT, "n_predict": n_predict, "temperature": 0, "ignore_eos": True,
            "n_keep": n_keep, "cache_prompt": False, "return_tokens": True}  # fmt: skip
    r = httpx.post(shifting.url + "/completion", json=body, timeout=600)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens_predicted"] == n_predict > N_CTX
    assert out["truncated"] is True
    assert out["timings"]["prompt_n"] == len(ids)  # the shifts' re-reads are not prompt
    assert out["generation_settings"]["n_keep"] == n_keep
    keep = len(ids) if n_keep == -1 else n_keep
    assert out["tokens"] == reference(model, ids, n_predict, keep)


def test_without_context_shift_a_full_slot_stops(live_server, model):
    srv = live_server(n_ctx=N_CTX, n_parallel=1)
    body = {"prompt": PROMPT, "n_predict": 2 * N_CTX, "temperature": 0, "ignore_eos": True}
    out = httpx.post(srv.url + "/completion", json=body, timeout=600).json()
    n_prompt = len(model.tokenize(PROMPT, parse_special=True))
    assert out["truncated"] is True and out["tokens_predicted"] == N_CTX - n_prompt + 1
