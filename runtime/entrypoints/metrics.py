"""Prometheus metrics of the HTTP server (its own registry, so several servers can coexist)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "radixlm_requests", "Finished requests by finish type", ["finish"], registry=r
        )
        self.prompt_tokens = Counter(
            "radixlm_prompt_tokens", "Prompt tokens of finished requests", registry=r
        )
        self.generation_tokens = Counter("radixlm_generation_tokens", "Generated tokens", registry=r)
        self.cached_tokens = Counter(
            "radixlm_cached_tokens", "Prompt tokens served from the radix cache", registry=r
        )
        self.ttft = Histogram(
            "radixlm_time_to_first_token_seconds", "Time to first token", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.itl = Histogram(
            "radixlm_inter_token_latency_seconds",
            "Time between output tokens",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.e2e = Histogram(
            "radixlm_e2e_request_latency_seconds", "Request latency", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.running = Gauge("radixlm_num_running_reqs", "Running requests", registry=r)
        self.queued = Gauge("radixlm_num_queue_reqs", "Queued requests", registry=r)
        self.token_usage = Gauge("radixlm_token_usage", "Fraction of the KV pool in use", registry=r)
        self.cache_hit_rate = Gauge(
            "radixlm_cache_hit_rate", "Cached / prompt tokens since start", registry=r
        )

        self.hit_tokens = Gauge(
            "radixlm_cache_hit_tokens",
            "Prompt tokens since start by where their KV came from",
            ["source"],
            registry=r,
        )
        self.host_usage = Gauge(
            "radixlm_host_token_usage", "Fraction of the host KV tier holding prefixes", registry=r
        )
        self.tier_bytes = Gauge(
            "radixlm_hicache_bytes", "KV bytes moved between the tiers since start", ["direction"], registry=r
        )
        self.load_latency = Gauge(
            "radixlm_hicache_load_latency_seconds", "Host-to-device load latency", ["stat"], registry=r
        )

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_finished(self, state: Any) -> None:
        meta = state.meta_info
        reason = meta.get("finish_reason") or {}
        self.requests.labels(finish=reason.get("type", "unknown")).inc()
        self.prompt_tokens.inc(meta.get("prompt_tokens", 0))
        self.generation_tokens.inc(meta.get("completion_tokens", 0))
        self.cached_tokens.inc(meta.get("cached_tokens", 0))
        self.e2e.observe(meta.get("e2e_latency", 0.0))

    def update_from_server_info(self, info: dict) -> None:
        self.running.set(info.get("running", 0))
        self.queued.set(info.get("waiting", 0))
        total = info.get("total_tokens") or 1
        self.token_usage.set(
            (total - info.get("free_tokens", total) - info.get("evictable_tokens", 0)) / total
        )
        self.cache_hit_rate.set(info.get("cache_hit_rate", 0.0))
        for source in ("device", "host"):
            self.hit_tokens.labels(source=source).set(info.get(f"{source}_hit_tokens", 0))
        self.hit_tokens.labels(source="recomputed").set(info.get("recomputed_tokens", 0))
        if info.get("hierarchical_cache"):
            host_total = info.get("host_total_tokens") or 1
            self.host_usage.set(1 - info.get("host_free_tokens", host_total) / host_total)
            self.tier_bytes.labels(direction="to_host").set(info.get("bytes_to_host", 0))
            self.tier_bytes.labels(direction="to_device").set(info.get("bytes_to_device", 0))
            for stat in ("mean", "p50", "max"):
                ms = info.get(f"load_latency_ms_{stat}")
                if ms is not None:
                    self.load_latency.labels(stat=stat).set(ms / 1e3)

    def render(self) -> bytes:
        return generate_latest(self.registry)
