"""llama-server's KV cache options: --kv-unified (the slots share one pool of cells) and
--cache-ram (a host-memory prompt cache), on SmolLM2."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from llmrt.server.slots import PromptCache

FILL = "The quick brown fox jumps over the lazy dog. " * 6  # ~60 tokens


def complete(url: str, prompt: str, n: int, **extra) -> httpx.Response:
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True, **extra}
    return httpx.post(url + "/completion", json=body, timeout=300)


@pytest.fixture(scope="module")
def unified(live_server):
    """2 slots sharing a pool of 64 cells."""
    return live_server(n_ctx=64, n_parallel=2, kv_unified=True)


def test_unified_slot_may_fill_the_pool(unified):
    props = httpx.get(unified.url + "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 64
    r = complete(unified.url, "Hello", 50)  # more than the 32 cells a slot has without the pool
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["timings"]["predicted_n"] == 50 and out["truncated"] is False


def test_unified_pool_full_fails_every_active_request(unified):
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def run(prompt: str) -> None:
        r = complete(unified.url, prompt, 40)
        with lock:
            results.append(r)

    # each fits alone (a few prompt tokens + 40); together they need more than 64 cells
    threads = [threading.Thread(target=run, args=(p,)) for p in ("Hello", "Once upon")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [500, 500], [r.text for r in results]
    for r in results:
        assert r.json()["error"]["message"] == "Context size has been exceeded."
    # the pool was freed: the next request has all of it
    assert unified.scheduler.ctx.n_free == 64
    assert complete(unified.url, "Hello", 50).status_code == 200


def test_unified_idle_slot_is_purged_for_room(unified):
    first = complete(unified.url, "Hello", 40)
    assert first.status_code == 200
    held = 64 - unified.scheduler.ctx.n_free
    assert held >= 40  # the idle slot keeps its tokens
    # another prompt, placed in the other slot, needs cells the idle one holds
    second = complete(unified.url, "Once upon a time", 40, id_slot=1 - first.json()["id_slot"])
    assert second.status_code == 200, second.text
    assert second.json()["timings"]["predicted_n"] == 40
    assert unified.scheduler.slots[first.json()["id_slot"]].cache == []


@pytest.mark.parametrize("cache_ram", [0, 64])
def test_prompt_cache_brings_a_prompt_back(live_server, cache_ram):
    srv = live_server(n_ctx=256, n_parallel=1, cache_ram_mib=cache_ram)
    a, b = FILL + "So", "A different prompt entirely, about tea and cakes."
    first = complete(srv.url, a, 4).json()
    n_prompt = first["timings"]["prompt_n"]
    assert complete(srv.url, b, 4).status_code == 200  # the one slot now holds b
    again = complete(srv.url, a, 4).json()
    assert again["content"] == first["content"]  # the cached cache gives the same text
    if cache_ram:  # a was saved when b took the slot, and loaded back: only its last token is read
        assert again["timings"]["cache_n"] == n_prompt - 1
        assert again["timings"]["prompt_n"] == 1
    else:
        assert again["timings"]["cache_n"] == 0
        assert again["timings"]["prompt_n"] == n_prompt


def _read(n: int, width: int = 4):
    return lambda: (np.arange(n), {"k": np.zeros((n, width), np.float32)})


def test_prompt_cache_keeps_within_its_limits():
    cache = PromptCache(limit_mib=-1, limit_tokens=0)
    assert cache.save([1, 2, 3], _read(3))
    assert not cache.save([1, 2], _read(2))  # already held as part of [1, 2, 3]
    assert cache.save([1, 2, 3, 4], _read(4))  # holds [1, 2, 3]: that one goes
    assert [st.tokens for st in cache.states] == [[1, 2, 3, 4]]
    assert cache.save([9, 9], _read(2))
    # the entry that keeps the most of itself and covers the most of the prompt
    assert cache.take([], [1, 2, 3, 4, 5]).tokens == [1, 2, 3, 4]
    assert cache.take([], [5, 6]) is None  # shares nothing
    assert cache.take([9, 9, 8], [9, 9, 7]) is None  # no better than what the slot holds
    small = PromptCache(limit_mib=1, limit_tokens=0)
    width = 1 << 16  # 256 KiB of float32 a token (and its 8-byte position): 3 fit in a MiB
    for token in (0, 10, 20, 30):
        assert small.save([token], _read(1, width))
    assert [st.tokens for st in small.states] == [[10], [20], [30]]  # the oldest made room
    assert not small.save(list(range(40, 45)), _read(5, width))  # larger than the limit
