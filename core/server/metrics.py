"""/metrics in Prometheus' text format, with llama-server's metric names (`llamacpp:*`)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from llmrt.server.slots import Scheduler


class _Collector:
    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched

    def collect(self):
        s = self.sched
        m = s.metrics
        counters = (
            ("prompt_tokens", "Number of prompt tokens processed.", m.prompt_tokens_total),
            ("prompt_seconds", "Prompt process time", m.prompt_seconds_total),
            ("tokens_predicted", "Number of generation tokens processed.",
             m.tokens_predicted_total),
            ("tokens_predicted_seconds", "Predict process time",
             m.tokens_predicted_seconds_total),
            ("n_decode", "Number of llama_decode() calls", m.n_decode_total),
            ("requests", "Number of requests received.", m.requests_total),
            ("requests_cancelled", "Number of requests cancelled.", m.requests_cancelled),
        )  # fmt: skip
        for name, doc, value in counters:
            yield CounterMetricFamily(f"llamacpp:{name}", doc, value=value)
        busy = m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0
        used = int((s.ctx.cell_pos >= 0).sum())
        gauges = (
            ("n_busy_slots_per_decode", "Average number of busy slots per decode call.", busy),
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
             m.prompt_tokens_total / m.prompt_seconds_total if m.prompt_seconds_total else 0.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s.",
             m.tokens_predicted_total / m.tokens_predicted_seconds_total
             if m.tokens_predicted_seconds_total else 0.0),
            ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
             used / s.ctx.n_ctx),
            ("kv_cache_tokens", "KV-cache tokens.", used),
            ("requests_processing", "Number of requests processing.", s.n_busy),
            ("requests_deferred", "Number of requests deferred.", s.n_waiting),
        )  # fmt: skip
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"llamacpp:{name}", doc, value=value)


def render(sched: Scheduler) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(sched))
    return generate_latest(registry), CONTENT_TYPE_LATEST
