"""Prometheus metrics of one server, on its own registry (so two apps in one process never clash).

``GET /metrics`` renders them. Labels are the served model ids only (a request for an unknown model
counts under ``unknown``), so a client cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_ids: list[str]):
        self.model_ids = set(model_ids)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneloop_requests", "Completion requests by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("tuneloop_request_latency_seconds", "Time to the full answer",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tuneloop_tokens", "Prompt and completion tokens", ["model", "kind"], registry=r)
        self.errors = Counter("tuneloop_errors", "Failed requests by model and error type",
                              ["model", "type"], registry=r)
        self.feedback = Counter("tuneloop_feedback", "Feedback by model and rating", ["model", "rating"],
                                registry=r)
        self.batch_size = Histogram("tuneloop_batch_size", "Requests sharing each decode step (forward pass)",
                                    ["model"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.in_flight = Gauge("tuneloop_requests_in_flight", "Generations running or queued", registry=r)

    def label(self, model: str | None) -> str:
        return model if model in self.model_ids else "unknown"

    def observe_request(self, model: str | None, endpoint: str, status: int, latency_s: float,
                        prompt_tokens: int = 0, completion_tokens: int = 0, error_type: str | None = None):
        model = self.label(model)
        self.requests.labels(model, endpoint, str(status)).inc()
        if status == 200:
            self.latency.labels(model, endpoint).observe(latency_s)
            self.tokens.labels(model, "prompt").inc(prompt_tokens)
            self.tokens.labels(model, "completion").inc(completion_tokens)
        else:
            self.errors.labels(model, error_type or str(status)).inc()

    def observe_feedback(self, model: str | None, rating: int) -> None:
        self.feedback.labels(self.label(model), "positive" if rating > 0 else "negative").inc()

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(self.label(model)).observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
