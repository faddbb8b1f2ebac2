"""The service's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by endpoint and status, latency, batch sizes, queue depth, tokens and tokens/s, and the
    loaded models with their memory. ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "autoglm_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "autoglm_request_seconds", "Request latency by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("autoglm_batch_size", "Requests per batch run", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("autoglm_queue_depth", "Requests waiting for a batch", registry=r)
        self.tokens = Counter("autoglm_tokens", "Tokens fed through a model", ["model"], registry=r)
        self.compute_seconds = Counter(
            "autoglm_compute_seconds", "Seconds spent in model batches", ["model"], registry=r
        )
        self.tokens_per_s = Gauge("autoglm_tokens_per_second", "Tokens/s of the last batch", ["model"], registry=r)
        self.loaded = Gauge("autoglm_model_loaded", "1 while a model is loaded", ["model"], registry=r)
        self.memory = Gauge("autoglm_model_memory_bytes", "Bytes of a loaded model's weights", ["model"], registry=r)
        self.pool_events = Counter(
            "autoglm_model_pool_events",
            "Model loads and releases (reason: load, idle, budget)",
            ["model", "reason"],
            registry=r,
        )

    def model_changed(self, name: str, size: int | None, reason: str) -> None:
        """The pool's ``on_change`` hook."""
        self.loaded.labels(name).set(0 if size is None else 1)
        self.memory.labels(name).set(size or 0)
        self.pool_events.labels(name, reason).inc()

    def batch_done(self, model: str, tokens: int, seconds: float) -> None:
        self.tokens.labels(model).inc(tokens)
        self.compute_seconds.labels(model).inc(seconds)
        if seconds > 0:
            self.tokens_per_s.labels(model).set(tokens / seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
