"""/metrics in Prometheus' text format, with llama-server's metric names (`llamacpp:*`).

Written out directly: llama-server has a counter without the `_total` suffix
(`llamacpp:n_tokens_max`), which prometheus_client would rename.
"""

from __future__ import annotations

from llmrt.server.slots import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(sched: Scheduler) -> tuple[str, str]:
    s = sched
    m = s.metrics
    used = int((s.ctx.cell_pos >= 0).sum())
    counters = (
        ("prompt_tokens_total", "Number of prompt tokens processed.", m.prompt_tokens_total),
        ("prompt_tokens_cached_total", "Number of prompt tokens taken from the cache.",
         m.prompt_tokens_cached_total),
        ("prompt_seconds_total", "Prompt process time", m.prompt_seconds_total),
        ("tokens_predicted_total", "Number of generation tokens processed.",
         m.tokens_predicted_total),
        ("tokens_predicted_seconds_total", "Predict process time",
         m.tokens_predicted_seconds_total),
        ("n_decode_total", "Number of llama_decode() calls", m.n_decode_total),
        ("n_tokens_max", "Largest observed n_tokens.", m.n_tokens_max),
        ("requests_total", "Number of requests received.", m.requests_total),
        ("requests_cancelled_total", "Number of requests cancelled.", m.requests_cancelled),
        # llmrt has no speculative decoding: these stay 0
        ("spec_decode_num_draft_tokens_total", "Number of draft tokens generated.", 0),
        ("spec_decode_num_accepted_tokens_total", "Number of draft tokens accepted.", 0),
        ("spec_decode_num_drafts_total", "Number of drafts generated.", 0),
    )  # fmt: skip
    rate = m.prompt_tokens_total / m.prompt_seconds_total if m.prompt_seconds_total else 0.0
    gen_rate = (m.tokens_predicted_total / m.tokens_predicted_seconds_total
                if m.tokens_predicted_seconds_total else 0.0)  # fmt: skip
    gauges = (
        ("n_busy_slots_per_decode", "Average number of busy slots per decode call.",
         m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0),
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.", rate),
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s.", gen_rate),
        ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
         used / s.ctx.n_ctx),
        ("kv_cache_tokens", "KV-cache tokens.", used),
        ("requests_processing", "Number of requests processing.", s.n_busy),
        ("requests_deferred", "Number of requests deferred.", s.n_waiting),
    )  # fmt: skip
    lines = []
    for kind, metrics in (("counter", counters), ("gauge", gauges)):
        for name, doc, value in metrics:
            lines += [f"# HELP llamacpp:{name} {doc}", f"# TYPE llamacpp:{name} {kind}",
                      f"llamacpp:{name} {float(value)}"]  # fmt: skip
    return "\n".join(lines) + "\n", CONTENT_TYPE
